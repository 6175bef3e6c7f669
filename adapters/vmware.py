"""VMware vSphere adapter: one paged PropertyCollector retrieval over a ContainerView per poll."""

import contextlib
import http.client
import ssl
import time
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator
from pyVmomi import SoapStubAdapter, vim, vmodl

from adapters.base import (
    Adapter,
    AdapterConfig,
    AdapterError,
    AuthError,
    ConfigError,
    Observation,
    PollResult,
    UnreachableError,
)
from adapters.credentials import SecretError
from adapters.tr7meta import ProblemLog, recognise

# vim25/6.5: every property read here exists since vSphere 4, and vCenter 6.5 .. 8.x accept it.
# Pinned (no vimServiceVersions.xml negotiation) because pyVmomi's negotiation has no timeout.
API_VERSION = "vim.version.version11"
PAGE_SIZE = 1000  # objects per RetrievePropertiesEx page; vCenter may return fewer
EXTRA_PREFIX = "guestinfo."
STATES = {"poweredOn": "running", "poweredOff": "stopped", "suspended": "suspended"}
VM_PROPS = ["config.instanceUuid", "config.template", "config.extraConfig", "customValue",
            "runtime.powerState", "runtime.host"]
PC = vmodl.query.PropertyCollector


class VMwareConfig(AdapterConfig):
    """One vCenter Server (or standalone ESXi host) polled through the vSphere Web Services API."""

    platform: Literal["vmware"] = Field(default="vmware", description="vmware")
    url: str = Field(description="SDK endpoint, e.g. https://vcenter.example/sdk (http:// only for "
                                 "simulators)")
    username: str = Field(min_length=1, description="vCenter user with a read-only role, e.g. "
                                                    "svc-tr7@vsphere.local")
    password: str | None = Field(default=None, description="Password (prefer password_file)")
    password_file: str | None = Field(default=None, description="File holding the password; a relative "
                                      "name is looked up in $CREDENTIALS_DIRECTORY (systemd LoadCredential)")
    verify_tls: bool = Field(default=True, description="Verify the server certificate (false only for labs)")
    ca_file: str | None = Field(default=None, description="PEM file of the CA that signed the vCenter "
                                "certificate (the VMCA root), when it is not in the system store")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError("url must be https://host[:port]/sdk")
        return v

    @model_validator(mode="after")
    def _password(self) -> "VMwareConfig":
        if (self.password is None) == (self.password_file is None):
            raise ValueError("give exactly one of password or password_file")
        if self.ca_file is not None and not self.verify_tls:
            raise ValueError("ca_file is only used with verify_tls = true")
        return self


class _SessionExpired(Exception):
    """The server no longer knows our session (timed out, terminated, vpxd restarted)."""


def _fault_name(fault: Any) -> str:
    return type(fault).__name__.rsplit(".", 1)[-1]


def _convert(exc: BaseException, url: str) -> AdapterError:
    """Turn a pyVmomi / socket exception into the AdapterError the agent understands."""
    if isinstance(exc, AdapterError):
        return exc
    if isinstance(exc, vim.fault.InvalidLogin):
        return AuthError("login refused", f"{url}: login refused (wrong user name or password)")
    if isinstance(exc, vim.fault.NoPermission | vim.fault.NotAuthenticated):
        priv = getattr(exc, "privilegeId", None) or "?"
        return AuthError("permission denied", f"{url}: permission denied (missing privilege {priv})")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return UnreachableError("TLS certificate not trusted",
                                f"{url}: {exc.verify_message}; set ca_file to the vCenter CA (VMCA) "
                                "root or verify_tls = false")
    if isinstance(exc, TimeoutError):
        return UnreachableError("timeout", f"{url}: no answer within the timeout")
    if isinstance(exc, OSError | http.client.HTTPException):
        return UnreachableError("unreachable", f"{url}: {type(exc).__name__}: {exc}")
    if isinstance(exc, vmodl.MethodFault):
        msg = getattr(exc, "msg", "") or ""
        return AdapterError(f"vSphere fault {_fault_name(exc)}", f"{url}: {_fault_name(exc)} {msg}")
    return AdapterError(f"unexpected {type(exc).__name__}", f"{url}: {type(exc).__name__}: {exc}")


class VMwareAdapter(Adapter):
    """Finds TR7 appliances among the VMs of one vCenter."""

    platform = "vmware"
    Config = VMwareConfig
    config: VMwareConfig

    def __init__(self, config: VMwareConfig) -> None:
        super().__init__(config)
        self.problems = ProblemLog(config.name)
        self._content: Any = None  # vim.ServiceInstanceContent of the logged-in session

    # -- connection -------------------------------------------------------------------------
    def _ssl_context(self) -> ssl.SSLContext | None:
        if urlsplit(self.config.url).scheme == "http":
            return None
        if not self.config.verify_tls:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            return ctx
        try:
            return ssl.create_default_context(cafile=self.config.ca_file)
        except OSError as exc:
            raise ConfigError(f"cannot read ca_file {self.config.ca_file}: {exc.strerror}") from exc

    def _login(self) -> Any:
        cfg = self.config
        try:
            password = cfg.secret(cfg.password, cfg.password_file, "password") or ""
        except SecretError as exc:
            raise ConfigError(str(exc)) from exc
        stub = SoapStubAdapter(url=cfg.url, version=API_VERSION, sslContext=self._ssl_context(),
                               httpConnectionTimeout=cfg.timeout, connectionPoolTimeout=-1)
        try:
            content = vim.ServiceInstance("ServiceInstance", stub).RetrieveContent()
            content.sessionManager.Login(cfg.username, password)
        except Exception as exc:
            raise _convert(exc, cfg.url) from exc
        return content

    def close(self) -> None:
        content, self._content = self._content, None
        if content is not None:
            with contextlib.suppress(Exception):  # a dead session needs no logout
                content.sessionManager.Logout()

    # -- poll -------------------------------------------------------------------------------
    def poll(self) -> PollResult:
        fresh = self._content is None
        if fresh:
            self._content = self._login()
        try:
            try:
                return self._collect(self._content)
            except (vim.fault.NotAuthenticated, _SessionExpired):
                if fresh:
                    raise
                # the session expired between polls: log in again, once per poll
                self._content = None
                self._content = self._login()
                return self._collect(self._content)
        except Exception as exc:
            if isinstance(exc, vim.fault.NotAuthenticated | _SessionExpired):
                self._content = None
                raise AuthError("session refused right after login",
                                f"{self.config.url}: NotAuthenticated right after a fresh login") from exc
            if not isinstance(exc, AdapterError | vmodl.MethodFault):
                self._content = None  # transport broke: reconnect next time
            raise _convert(exc, self.config.url) from exc

    def _retrieve(self, content: Any, spec: Any) -> list[Any]:
        """All pages of one RetrievePropertiesEx; the token is cancelled if we stop early."""
        deadline = time.monotonic() + self.config.timeout
        pc = content.propertyCollector
        result = pc.RetrievePropertiesEx([spec], PC.RetrieveOptions(maxObjects=PAGE_SIZE))
        objects: list[Any] = []
        while result is not None:
            objects.extend(result.objects)
            if not result.token:
                break
            if time.monotonic() > deadline:
                pc.CancelRetrievePropertiesEx(result.token)
                raise UnreachableError("timeout", f"{self.config.url}: retrieval exceeded "
                                                  f"{self.config.timeout}s after {len(objects)} objects")
            result = pc.ContinueRetrievePropertiesEx(result.token)
        return objects

    def _collect(self, content: Any) -> PollResult:
        view = content.viewManager.CreateContainerView(
            content.rootFolder, [vim.VirtualMachine, vim.HostSystem], True)
        try:
            object_specs = [PC.ObjectSpec(obj=view, skip=True, selectSet=[
                PC.TraversalSpec(name="view", type=vim.view.ContainerView, path="view", skip=False)])]
            prop_specs = [PC.PropertySpec(type=vim.VirtualMachine, pathSet=VM_PROPS),
                          PC.PropertySpec(type=vim.HostSystem, pathSet=["name"])]
            if content.customFieldsManager is not None:  # absent on a standalone ESXi host
                object_specs.append(PC.ObjectSpec(obj=content.customFieldsManager, skip=False))
                prop_specs.append(PC.PropertySpec(type=vim.CustomFieldsManager, pathSet=["field"]))
            objects = self._retrieve(content, PC.FilterSpec(objectSet=object_specs, propSet=prop_specs))
        finally:
            with contextlib.suppress(Exception):  # views die with the session anyway
                view.DestroyView()
        return self._observe(objects)

    def _observe(self, objects: list[Any]) -> PollResult:
        hosts: dict[str, str] = {}
        fields: dict[int, str] = {}
        vms: list[tuple[str, dict[str, Any]]] = []
        unreadable = 0
        for oc in objects:
            props = {p.name: p.val for p in oc.propSet}
            for missing in oc.missingSet or []:
                if isinstance(missing.fault.fault, vim.fault.NotAuthenticated):
                    raise _SessionExpired()
            if isinstance(oc.obj, vim.VirtualMachine):
                if oc.missingSet:
                    unreadable += 1
                vms.append((oc.obj._moId, props))
            elif isinstance(oc.obj, vim.HostSystem):
                hosts[oc.obj._moId] = props.get("name") or oc.obj._moId
            elif isinstance(oc.obj, vim.CustomFieldsManager):
                fields = {f.key: f.name for f in props.get("field") or []}
        observations = [obs for moid, props in vms
                        if (obs := self._observation(moid, props, hosts, fields)) is not None]
        error = f"{unreadable} VMs could not be read (permission?)" if unreadable else None
        return PollResult(observations=observations, error=error)

    def _observation(self, moid: str, props: dict[str, Any], hosts: dict[str, str],
                     fields: dict[int, str]) -> Observation | None:
        if props.get("config.template"):
            return None  # a template is a source of instances, never one
        meta = {}
        for cv in props.get("customValue") or []:
            name = fields.get(cv.key, "")
            if name.startswith("tr7.") and isinstance(getattr(cv, "value", None), str):
                meta[name] = cv.value
        # guestinfo.* travels with the VM (clone, OVF, vMotion): it wins over a custom attribute
        for opt in props.get("config.extraConfig") or []:
            if opt.key.startswith(EXTRA_PREFIX + "tr7.") and opt.value is not None:
                meta[opt.key[len(EXTRA_PREFIX):]] = str(opt.value)
        if "tr7.instance" not in meta:
            return None
        uuid = props.get("config.instanceUuid")
        if not uuid:
            self.problems.warn(moid, "tagged tr7.instance but has no config.instanceUuid; VM skipped")
            return None
        found = recognise(meta, uuid, self.problems)
        if found is None:
            return None
        instance, capacity = found
        host_ref = props.get("runtime.host")
        host = hosts.get(host_ref._moId, host_ref._moId) if host_ref is not None else None
        state = STATES.get(str(props.get("runtime.powerState")), "unknown")
        return Observation(instance=instance, vm=uuid, host=host, state=state, capacity=capacity)


ADAPTER = VMwareAdapter
