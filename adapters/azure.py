"""Azure adapter: TR7 instances are VMs tagged `tr7.instance`, listed with power state per subscription."""

from typing import Annotated, Any, ClassVar, Literal

from azure.core.credentials import TokenCredential
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.identity import (
    CertificateCredential,
    ClientSecretCredential,
    DefaultAzureCredential,
    ManagedIdentityCredential,
)
from azure.mgmt.compute import ComputeManagementClient
from pydantic import Field, StringConstraints, model_validator

from adapters.base import (
    Adapter,
    AdapterConfig,
    AdapterError,
    AuthError,
    ConfigError,
    Observation,
    PollResult,
    ThrottledError,
    UnreachableError,
)
from adapters.credentials import SecretError, readable_file
from adapters.fanout import SetupLock, Turns, forgetting, poll_deadline, poll_scopes, within
from adapters.tr7meta import ProblemLog, recognise

# Azure power state -> heartbeat state. Only a settled `running` is billed; see docs/adapters/azure.md.
STATES = {
    "running": "running",
    "starting": "unknown",  # booting: not serving yet
    "stopping": "stopped",
    "stopped": "stopped",  # OS shut down, still allocated: the appliance does not run
    "deallocating": "stopped",
    "deallocated": "stopped",
}
GUID = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
TRANSPORT_FAILURES = ("SSL", "CERTIFICATE_VERIFY_FAILED", "Connection refused", "Failed to establish",
                      "Max retries exceeded", "timed out", "Name or service not known", "Connection aborted")
RETRIES = 4  # per request; 429 answers are retried after their Retry-After
RECHECK_MAX = 50  # instance-view calls per subscription and poll when the list lacks a power state


class AzureConfig(AdapterConfig):
    subscriptions: list[Annotated[str, StringConstraints(pattern=GUID)]] = Field(
        min_length=1, description="Subscription ids (GUIDs) whose virtual machines are listed")
    tenant_id: str | None = Field(
        default=None, description="Directory (tenant) id of the service principal")
    client_id: str | None = Field(
        default=None, description="Application (client) id of the service principal, or of a\n"
                                  "user-assigned managed identity when no secret or certificate is given")
    client_secret: str | None = Field(
        default=None, description="Service principal secret (prefer client_secret_file)")
    client_secret_file: str | None = Field(
        default=None, description="File holding the secret; relative names are looked up in\n"
                                  "$CREDENTIALS_DIRECTORY (systemd LoadCredential=)")
    certificate_file: str | None = Field(
        default=None, description="PEM file with the service principal's certificate and private key")
    identity: Literal["managed", "default"] = Field(
        default="managed",
        description='Without secret or certificate: "managed" = the managed identity of the agent\'s VM;\n'
                    '"default" = DefaultAzureCredential (environment, workload identity, managed\n'
                    "identity, Azure CLI)")
    authority_host: str = Field(
        default="login.microsoftonline.com",
        description="Entra ID host: login.microsoftonline.us (US Gov), login.chinacloudapi.cn (China)")
    resource_manager_url: str = Field(
        default="https://management.azure.com", pattern=r"^https://",
        description="Azure Resource Manager: https://management.usgovcloudapi.net (US Gov),\n"
                    "https://management.chinacloudapi.cn (China)")
    ca_file: str | None = Field(
        default=None, description="PEM bundle trusted instead of the system CAs, for both Entra ID\n"
                                  "and ARM (TLS-inspecting proxy, Azure Stack Hub)")
    api_version: str | None = Field(
        default=None, pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}(-[a-z]+)?$",
        description="Microsoft.Compute api-version of the list calls; unset = the installed SDK's\n"
                    "newest. Azure Stack Hub's 2020-09-01-hybrid profile needs 2020-06-01")

    @model_validator(mode="after")
    def _one_way_to_sign_in(self) -> "AzureConfig":
        secret = self.client_secret is not None or self.client_secret_file is not None
        if secret and self.certificate_file is not None:
            raise ValueError("give a client secret or a certificate_file, not both")
        if (secret or self.certificate_file) and not (self.tenant_id and self.client_id):
            raise ValueError("a service principal needs tenant_id and client_id")
        return self


def _power(instance_view: Any) -> str | None:
    """The `PowerState/<x>` status of an instance view, lowercased; None when there is none."""
    for status in (instance_view.statuses if instance_view else None) or []:
        if (status.code or "").startswith("PowerState/"):
            return str(status.code.split("/", 1)[1].lower())
    return None


def _short(exc: Exception) -> str:
    """First line of an SDK message: azure-identity adds pages of troubleshooting text."""
    text = str(getattr(exc, "message", None) or exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def convert(exc: Exception, signing_in: bool = False) -> AdapterError:
    """An azure-core/azure-identity exception as the AdapterError the agent reports."""
    if isinstance(exc, AdapterError):
        return exc
    if signing_in and isinstance(exc, ClientAuthenticationError):
        # msal turns a transport failure into a token error: tell "could not reach" from "refused"
        if any(m in str(exc) for m in TRANSPORT_FAILURES):
            return UnreachableError(f"Entra ID unreachable: {_short(exc)}", str(exc))
        return AuthError(f"Azure sign-in refused: {_short(exc)}", str(exc))
    if isinstance(exc, HttpResponseError) and exc.status_code:
        status, error = exc.status_code, getattr(exc, "error", None)
        code = getattr(error, "code", None) or exc.reason or ""
        message = getattr(error, "message", None) or _short(exc)
        reason = f"ARM {status} {code}: {message}"[:300]
        if status in (401, 403):
            return AuthError(reason, str(exc))
        if status == 429:
            return ThrottledError(f"ARM throttled (429) after {RETRIES + 1} attempts", str(exc))
        if status == 404:
            return ConfigError(reason, str(exc))
        return AdapterError(reason, str(exc))
    if isinstance(exc, ClientAuthenticationError):
        return AuthError(f"Azure sign-in refused: {_short(exc)}", str(exc))
    if isinstance(exc, ServiceRequestError | ServiceResponseError):
        return UnreachableError(f"Azure endpoint unreachable: {_short(exc)}", str(exc))
    if isinstance(exc, AzureError | ValueError):
        return AdapterError(f"Azure: {_short(exc)}", str(exc))
    return AdapterError(f"Azure: unexpected {type(exc).__name__}: {exc}"[:300], repr(exc))


class AzureAdapter(Adapter):
    platform: ClassVar[str] = "azure"
    Config: ClassVar[type[AdapterConfig]] = AzureConfig
    config: AzureConfig

    def __init__(self, config: AdapterConfig) -> None:
        super().__init__(config)
        self.problems = ProblemLog(config.name)
        self._setup_lock = SetupLock()  # one poll's set-up at a time (fanout.within)
        self._turns = Turns()  # the scopes a late poll never asked go first next time
        self._credential: TokenCredential | None = None
        self._throttled: dict[str, str] = {}  # subscription -> Retry-After of its current call's last 429
        self._clients: dict[str, ComputeManagementClient] = {}

    def _transport_options(self) -> dict[str, Any]:
        # connection_verify reaches the requests transport of both SDKs: no REQUESTS_CA_BUNDLE needed
        opts: dict[str, Any] = {"connection_timeout": min(10.0, self.config.timeout),
                                "read_timeout": min(60.0, self.config.timeout)}
        if self.config.ca_file:
            opts["connection_verify"] = self.config.ca_file
        return opts

    def credential(self) -> TokenCredential:
        if self._credential is None:
            cfg = self.config
            try:
                secret = cfg.secret(cfg.client_secret, cfg.client_secret_file, "client_secret")
                if cfg.ca_file:
                    readable_file(cfg.ca_file, "ca_file")
            except SecretError as exc:
                raise ConfigError(str(exc)) from exc
            # msal would ask login.microsoftonline.com to vouch for an authority it does not know
            # (Azure Stack Hub, private test servers); for the well-known clouds it never asks anyway
            sign_in = {"authority": cfg.authority_host, "disable_instance_discovery": True,
                       **self._transport_options()}
            try:
                # a service principal: _one_way_to_sign_in made sure it names its tenant and client
                if secret is not None:
                    assert cfg.tenant_id is not None and cfg.client_id is not None
                    self._credential = ClientSecretCredential(cfg.tenant_id, cfg.client_id, secret, **sign_in)
                elif cfg.certificate_file is not None:
                    assert cfg.tenant_id is not None and cfg.client_id is not None
                    self._credential = CertificateCredential(
                        cfg.tenant_id, cfg.client_id, certificate_path=cfg.certificate_file, **sign_in)
                elif cfg.identity == "managed":
                    self._credential = ManagedIdentityCredential(client_id=cfg.client_id,
                                                                 **self._transport_options())
                else:
                    self._credential = DefaultAzureCredential(
                        managed_identity_client_id=cfg.client_id, exclude_interactive_browser_credential=True,
                        **sign_in)
            except (ValueError, OSError) as exc:
                raise ConfigError(f"Azure credential: {exc}") from exc
        return self._credential

    def scope(self) -> str:
        return self.config.resource_manager_url.rstrip("/") + "/.default"

    def sign_in(self) -> None:
        """Get (or reuse) the ARM token once, before the subscriptions are listed in parallel: one
        sign-in per token lifetime, and a refusal fails the whole poll with one clear reason."""
        try:
            self.credential().get_token(self.scope())
        except (AzureError, ValueError) as exc:
            raise convert(exc, signing_in=True) from exc
        except OSError as exc:  # a file the SDK opens itself (a CA bundle, a certificate) went away
            raise ConfigError(f"Azure sign-in: {exc}") from exc

    def client(self, subscription: str) -> ComputeManagementClient:
        if subscription not in self._clients:
            arm = self.config.resource_manager_url.rstrip("/")
            self._clients[subscription] = ComputeManagementClient(
                self.credential(), subscription, base_url=arm, credential_scopes=[self.scope()],
                retry_total=RETRIES, retry_backoff_max=20, timeout=self.config.timeout,
                **self._transport_options())
        return self._clients[subscription]

    def poll_subscription(self, subscription: str) -> list[Observation]:
        # this call's throttling from now on; a call of an earlier poll still retrying keeps its
        # entry (fanout.poll_scopes does not ask its scope again, and says it is throttled)
        self._throttled.pop(subscription, None)
        client = self.client(subscription)
        # Two lists, joined on the resource id (which ARM compares case-insensitively): the model
        # (tags, vmId, location) and, with statusOnly=true, the instanceView statuses (power
        # states). ARM's statusOnly answer has no tags and the plain one no instanceView: with the
        # statusOnly list alone no VM was recognised, and the poll said "none running" (ok: true).
        # Both page by nextLink: two requests per page of VMs, not one per VM.
        version: dict[str, Any] = {**self._version(), "raw_response_hook": self._watch(subscription)}
        models = [vm for vm in client.virtual_machines.list_all(**version) if self.observe(vm, None)]
        if not models:
            return []  # no TR7 VM in the subscription: its power states are not needed
        powers: dict[str, str | None] = {}
        for vm in client.virtual_machines.list_all(status_only="true", **version):
            if vm.id:
                powers[vm.id.lower()] = _power(vm.properties.instance_view if vm.properties else None)
        out = []
        rechecks = RECHECK_MAX
        for vm in models:
            power = powers.get((vm.id or "").lower())
            obs = self.observe(vm, power)
            if obs is not None and power is None and vm.id and rechecks > 0:
                # Not in the status list (made between the two calls), or Microsoft's rare statusOnly
                # answer without a power state: ask that VM's instance view
                rechecks -= 1
                obs = self._recheck(client, vm, obs)
            if obs is not None:
                out.append(obs)
        return out

    def _watch(self, subscription: str) -> Any:
        """A hook on every answer ARM gives this subscription's lists: a 429 is remembered, to say
        "throttled" rather than "no answer" when its Retry-After outlasts the poll."""
        def hook(response: Any) -> None:
            if response.http_response.status_code == 429:
                self._throttled[subscription] = response.http_response.headers.get("Retry-After", "?")
        return hook

    def _version(self) -> dict[str, str]:
        return {} if self.config.api_version is None else {"api_version": self.config.api_version}

    def _recheck(self, client: ComputeManagementClient, vm: Any, obs: Observation) -> Observation:
        parts = vm.id.split("/")  # /subscriptions/{s}/resourceGroups/{rg}/providers/.../{name}
        try:
            power = _power(client.virtual_machines.instance_view(parts[4], parts[-1], **self._version()))
        except (AzureError, IndexError) as exc:
            self.problems.warn(obs.vm, f"power state unavailable ({_short(exc)}); reported unknown")
            return obs
        return self.observe(vm, power) or obs

    def observe(self, vm: Any, power: str | None) -> Observation | None:
        props = vm.properties
        vm_id = (props.vm_id if props else None) or vm.id
        # Azure tag names are case-insensitive (a portal user may type TR7.Instance): fold ours
        tags = {(k.lower() if k.lower().startswith("tr7.") else k): v for k, v in (vm.tags or {}).items()}
        found = recognise(tags, vm_id, self.problems)
        if found is None:
            return None
        instance, capacity = found
        return Observation(instance=instance, vm=vm_id, host=vm.location,
                           state=STATES.get(power or "", "unknown"), capacity=capacity)

    def poll(self) -> PollResult:
        return forgetting(self._poll, self._forget)  # credentials read again after a failed poll

    def _forget(self) -> None:
        # not closed: a late subscription's thread may still be listing with its client
        self._clients = {}
        self._credential = None

    def _poll(self) -> PollResult:
        # the agent abandons a poll at `timeout`: answer before it, with the late subscriptions named
        deadline = poll_deadline(self.config.timeout)
        # ARM ids are case-insensitive: one subscription written twice in two cases was polled
        # twice, and each of its VMs observed twice
        subscriptions = list(dict.fromkeys(x.lower() for x in self.config.subscriptions))

        def set_up() -> None:
            self.sign_in()
            for sub in subscriptions:
                self.client(sub)

        within(deadline, set_up, what="Azure sign-in", lock=self._setup_lock,
               thread_name=f"azure-{self.name}-setup")
        limit = f"the {self.config.timeout:g}s poll timeout"

        def late(sub: str) -> AdapterError:
            if sub in self._throttled:
                return ThrottledError(f"ARM throttled (429, Retry-After {self._throttled[sub]} s), "
                                      f"still waiting at {limit}")
            return UnreachableError(f"ARM gave no answer within {limit}")

        return poll_scopes(
            subscriptions, self.poll_subscription, label="subscription", deadline=deadline, workers=8,
            thread_name=f"azure-{self.name}", convert=convert, late=late, turns=self._turns)

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()
        credential, self._credential = self._credential, None
        close = getattr(credential, "close", None)
        if close is not None:
            close()


ADAPTER = AzureAdapter
