"""Hyper-V adapter: one PowerShell run over WinRM (pywinrm) lists every VM of a host or cluster."""

import logging
import math
import re
import time
from typing import Literal
from urllib.parse import urlsplit

import requests
import winrm.exceptions as wex
from pydantic import Field, field_validator, model_validator
from winrm.protocol import Protocol

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
from adapters.fanout import INNER_MARGIN, Behind, SetupLock, poll_deadline, within
from adapters.hyperv_ps import build_script, decode_clixml, map_state, parse_output, powershell_command
from adapters.tr7meta import ProblemLog, parse_notes, recognise

log = logging.getLogger("tr7.adapters.hyperv")

class HyperVConfig(AdapterConfig):
    """A Hyper-V host (or failover cluster) reached through WinRM over HTTPS."""

    platform: Literal["hyperv"] = Field(description="This adapter: hyperv")
    url: str = Field(description="WinRM HTTPS listener, e.g. https://hv1.example:5986/wsman")
    username: str = Field(
        description="Account in 'Hyper-V Administrators': DOMAIN\\user, or user@REALM with kerberos")
    password: str | None = Field(
        default=None, description="Password, inline (prefer password_file; none with kerberos)")
    password_file: str | None = Field(
        default=None, description="File holding the password (relative: $CREDENTIALS_DIRECTORY)")
    transport: Literal["ntlm", "kerberos", "basic", "credssp"] = Field(
        default="ntlm", description="WinRM authentication: ntlm, kerberos, basic or credssp")
    verify_tls: bool = Field(default=True, description="Verify the listener's TLS certificate")
    ca_file: str | None = Field(default=None, description="PEM CA that signed the listener's certificate")
    cluster: bool = Field(
        default=False, description="Ask every node of the failover cluster (Get-ClusterNode), not one host")

    @field_validator("url")
    @classmethod
    def _https_url(cls, v: str) -> str:
        if not re.match(r"(?i)^https://[^/\s]+(/wsman/?)?$", v):
            raise ValueError("url must be https://HOST[:PORT][/wsman] (HTTP listeners are not supported)")
        parts = urlsplit(v)
        try:
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"url has a bad port: {exc}") from exc
        if port is None and parts.netloc.endswith(":"):  # "https://hv1:/wsman": no port after ':'
            raise ValueError("url has an empty port: give it (WinRM's HTTPS port is 5986) or drop the ':'")
        # No port: WinRM's HTTPS listener's, 5986, as winrs and Enter-PSSession -UseSSL take it
        # (the https default, 443, failed every poll with "connection failed")
        netloc = parts.netloc if port is not None else f"{parts.netloc}:5986"
        return f"https://{netloc}/wsman"

    @model_validator(mode="after")
    def _check(self) -> "HyperVConfig":
        has_password = self.password is not None or self.password_file is not None
        if self.transport == "kerberos" and has_password:
            # pywinrm's Kerberos takes the ticket from the credential cache (or MIT's client
            # keytab, KRB5_CLIENT_KTNAME); a password here would be silently ignored
            raise ValueError("transport kerberos uses a ticket cache or KRB5_CLIENT_KTNAME, not a password")
        if not has_password and self.transport != "kerberos":
            raise ValueError(f"transport {self.transport} needs password or password_file")
        if self.ca_file is not None and not self.verify_tls:
            raise ValueError("ca_file is only used when verify_tls is true")
        return self


def _convert(exc: Exception, transport: str = "ntlm") -> AdapterError:
    """pywinrm/requests exception -> AdapterError (the only place that knows them)."""
    if isinstance(exc, AdapterError):
        return exc
    if isinstance(exc, wex.InvalidCredentialsError | wex.AuthenticationError):
        return AuthError("authentication failed", str(exc))
    if type(exc).__module__.startswith("requests_credssp"):
        # AuthenticationException / NTStatusException: CredSSP refused (bad password, no delegation)
        return AuthError("authentication failed (CredSSP)", f"{type(exc).__name__}: {exc}")
    if isinstance(exc, wex.WSManFaultError):
        reason = " ".join((exc.reason or "").split())
        if exc.wsman_fault_code == 5 or (exc.fault_subcode or "").endswith("AccessDenied"):
            return AuthError(f"access denied: {reason}"[:200], str(exc))
        return AdapterError(f"WS-Management fault: {reason}"[:200], str(exc))
    if isinstance(exc, wex.WinRMTransportError):
        return AdapterError(f"HTTP {exc.code} from WinRM", f"{exc.message}: {exc.response_text[:500]}")
    if isinstance(exc, wex.WinRMError) and "not installed" in str(exc):
        return ConfigError(f"transport {transport} needs: pip install 'pywinrm[{transport}]'", str(exc))
    if isinstance(exc, requests.exceptions.SSLError):
        return UnreachableError("TLS verification failed", str(exc))
    if isinstance(exc, requests.exceptions.Timeout):
        return UnreachableError("timeout", str(exc))
    if isinstance(exc, requests.exceptions.ConnectionError):
        return UnreachableError("connection failed", str(exc))
    return AdapterError(f"WinRM: {type(exc).__name__}", str(exc))


class HyperVAdapter(Adapter):
    platform = "hyperv"
    Config = HyperVConfig
    config: HyperVConfig

    def __init__(self, config: AdapterConfig) -> None:
        super().__init__(config)
        self.problems = ProblemLog(config.name)
        self.script = build_script(self.config.cluster)
        self._lock = SetupLock()  # fanout.within: one script run at a time, a late one included
        self._behind = Behind(self.name)  # shell deletions left running behind their polls
        if self.config.cluster and self.config.transport == "ntlm":
            log.warning("adapter %s: cluster = true with NTLM: other nodes refuse the second hop unless "
                        "credentials can be delegated (credssp, or Kerberos delegation)", self.name)

    def _protocol(self) -> Protocol:
        c = self.config
        try:
            password = c.secret(c.password, c.password_file, "password")
        except SecretError as exc:
            raise ConfigError(str(exc)) from exc
        # pywinrm wants whole seconds with operation < read; the poll's deadline bounds the total
        read = max(2, min(30, math.ceil(c.timeout)))
        try:
            return Protocol(
                c.url, transport=c.transport, username=c.username, password=password,
                server_cert_validation="validate" if c.verify_tls else "ignore",
                # None: never from the environment (pywinrm takes it, though its annotation leaves it out)
                ca_trust_path=c.ca_file if c.ca_file else None,  # type: ignore[arg-type]
                read_timeout_sec=read, operation_timeout_sec=max(1, min(20, read - 1)),
                proxy=None,  # never an environment proxy for a hypervisor's management port
            )
        except Exception as exc:
            raise _convert(exc) from exc

    def run(self, deadline: float) -> tuple[bytes, bytes, int]:
        """Run the script once by ``deadline``: open shell, command, receive until done, signal,
        delete shell. Every call is an HTTP request whose timeout bounds each read, not the answer: a
        listener (or a proxy before it) dripping its answer held a poll of 2 s for 70 s while the agent
        said only "previous poll still running". So the script runs in its own thread (fanout.within):
        late, the poll fails; the next poll's script does not start beside it while it runs (the
        lock), and once its call ends its shell is deleted behind the polls (``fanout.Behind``,
        outside that lock)."""
        proto = self._protocol()
        opened: list[str | None] = [None, None]  # shell id, command id: what the cleanup ends

        def cleanup() -> None:
            self._cleanup(proto, *opened)

        def delete_later() -> None:
            self._behind.start(cleanup, what="WinRM shell deletion", thread_name=f"hv-cleanup-{self.name}")

        def script() -> tuple[bytes, bytes, int]:
            try:
                return self._script(proto, opened, deadline - INNER_MARGIN)
            except BaseException:
                # The shell is deleted however late, but after the error is given: a deletion slow to
                # answer turned "script unfinished" into "no answer" (a diff review). Its own Protocol:
                # nothing is shared with the next poll's script.
                delete_later()
                raise

        output = within(deadline, script, what="WinRM script", lock=self._lock,
                        thread_name=f"hv-script-{self.name}", abandoned=lambda _: delete_later())
        # The output is read: the shell is deleted by the deadline, or behind the poll (best effort)
        self._behind.run(deadline, cleanup, what="WinRM shell deletion",
                         thread_name=f"hv-cleanup-{self.name}")
        return output

    def _script(self, proto: Protocol, opened: list[str | None], deadline: float) -> tuple[bytes, bytes, int]:
        try:
            opened[0] = shell_id = proto.open_shell(noprofile=True)
            if time.monotonic() > deadline:  # its poll gave up on it: no script for nobody
                raise UnreachableError("timeout", f"no shell within {self.config.timeout:g}s")
            opened[1] = command_id = proto.run_command(shell_id, powershell_command(self.script))
            out: list[bytes] = []
            err: list[bytes] = []
            longest = proto.operation_timeout_sec
            while True:
                # Each Receive is a long poll the server holds up to its OperationTimeout: asked
                # for no longer than the time left, or a poll overran its timeout by up to 20 s
                left = deadline - time.monotonic()
                if left < 1:
                    raise UnreachableError("timeout", f"script unfinished after {self.config.timeout:g}s")
                proto.operation_timeout_sec = max(1, min(longest, int(left)))
                try:
                    stdout, stderr, code, done = proto.get_command_output_raw(shell_id, command_id)
                except wex.WinRMOperationTimeoutError:
                    stdout, stderr, code, done = b"", b"", -1, False  # long poll ended empty: ask again
                out.append(stdout)
                err.append(stderr)
                if done:
                    return b"".join(out), b"".join(err), code
                if time.monotonic() > deadline:
                    raise UnreachableError("timeout", f"script unfinished after {self.config.timeout:g}s")
        except Exception as exc:
            raise _convert(exc, self.config.transport) from exc

    def _cleanup(self, proto: Protocol, shell_id: str | None, command_id: str | None) -> None:
        # best effort: a failure here must not hide the poll's own outcome
        try:
            if shell_id and command_id:
                proto.cleanup_command(shell_id, command_id)
            if shell_id:
                proto.close_shell(shell_id)
        except Exception as exc:  # the shell expires on the server anyway
            log.debug("adapter %s: shell cleanup failed: %s", self.name, exc)
        finally:
            proto.transport.close_session()

    def poll(self) -> PollResult:
        stdout, stderr, code = self.run(poll_deadline(self.config.timeout))
        message = decode_clixml(stderr) if stderr else ""
        if code != 0 or message:
            first = message.splitlines()[0] if message else f"PowerShell exited with code {code}"
            if re.search(r"required permission|access is denied|unauthorized", message, re.I):
                raise AuthError(f"permission denied: {first}"[:200], message)
            raise AdapterError(f"PowerShell failed: {first}"[:200], message or first)
        vms, errors = parse_output(stdout)
        observations = []
        for v in vms:
            vm_id = str(v.get("Id") or "").strip().lower()
            if not vm_id:
                self.problems.warn(f"name={v.get('Name')!r}", "VM without Id; skipped")
                continue
            found = recognise(parse_notes(v.get("Notes") if isinstance(v.get("Notes"), str) else None),
                              vm_id, self.problems)
            if found is None:
                continue
            instance, capacity = found
            host = v.get("ComputerName")
            observations.append(Observation(instance=instance, vm=vm_id, state=map_state(v.get("State")),
                                            host=str(host) if host else None, capacity=capacity))
        observations.sort(key=lambda o: o.vm)
        error = "; ".join(errors)[:500] if errors else None
        return PollResult(observations=observations, error=error)


ADAPTER = HyperVAdapter
