"""VMware vSphere adapter: one paged PropertyCollector retrieval over a ContainerView per poll."""

import contextlib
import http.client
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any, Literal, TypeVar, cast
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator
from pyVmomi import vim, vmodl
from pyVmomi.SoapAdapter import SoapStubAdapter

from adapters import net, vsphere_pc
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
from adapters.fanout import INNER_MARGIN, Behind, SetupLock, StillWaiting, poll_deadline, within
from adapters.tr7meta import ProblemLog, recognise
from adapters.vsphere_pc import Obj, SessionExpired, fault_names, refusals, spec_xml

# vim25/6.5: every property read here exists since vSphere 4, and vCenter 6.5 .. 8.x accept it.
# Pinned (no vimServiceVersions.xml negotiation) because pyVmomi's negotiation has no timeout.
API_VERSION = "vim.version.version11"
STATES = {"poweredOn": "running", "poweredOff": "stopped", "suspended": "suspended"}
# How long the Login's answer is awaited once its poll gave up (see _login): vCenter's default idle
# timeout of a session. Until then no other login starts (fanout.SetupLock); keepalive probes end
# the wait sooner when the path is dead (net.patient).
LOGIN_WAIT = 1800.0
T = TypeVar("T")


class VMwareConfig(AdapterConfig):
    """One vCenter Server (or standalone ESXi host) polled through the vSphere Web Services API."""

    platform: Literal["vmware"] = Field(default="vmware", description="This adapter: vmware")
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


_HTTP_STATUS = re.compile(r"([1-5][0-9][0-9]) ")


def _convert(exc: BaseException, url: str) -> AdapterError:
    """Turn a pyVmomi / socket / SOAP exception into the AdapterError the agent understands."""
    if isinstance(exc, AdapterError):
        return exc
    if isinstance(exc, vim.fault.InvalidLogin):
        return AuthError("login refused", f"{url}: login refused (wrong user name or password)")
    if isinstance(exc, vim.fault.NoPermission):  # NotAuthenticated is a NoPermission too
        return AuthError("permission denied", f"{url}: permission denied ({exc.privilegeId or '?'})")
    status = _HTTP_STATUS.match(str(exc)) if isinstance(exc, http.client.HTTPException) else None
    if status is not None:  # pyVmomi's "503 Service Unavailable": the proxy answered, vpxd did not
        return UnreachableError(f"HTTP {status.group(1)}", f"{url}: HTTP {exc}")
    if failed := net.unreachable(exc, url, "set ca_file to the vCenter CA (VMCA) root or verify_tls = false"):
        return failed
    if isinstance(exc, vmodl.MethodFault):
        name = type(exc).__name__.rsplit(".", 1)[-1]
        return AdapterError(f"vSphere fault {name}", f"{url}: {name} {getattr(exc, 'msg', '') or ''}")
    if isinstance(exc, ET.ParseError):
        return AdapterError("malformed SOAP response", f"{url}: {exc}")
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
        self._stub: Any = None  # its SoapStubAdapter: holds the session cookie
        self._setup_lock = SetupLock()  # one login at a time (fanout.within)
        self._behind = Behind(self.name)  # logouts left running behind their polls
        self._closed = False

    # -- connection -------------------------------------------------------------------------
    def _login(self) -> tuple[Any, Any]:
        """A new session (RetrieveContent, Login), in a thread of its own (fanout.within)."""
        cfg = self.config
        try:
            password = cfg.secret(cfg.password, cfg.password_file, "password") or ""
        except SecretError as exc:
            raise ConfigError(str(exc)) from exc
        context = net.ssl_context(cfg.url, cfg.verify_tls, cfg.ca_file)
        # pyVmomi's SoapAdapter and managed object constructors have no annotations
        stub, login = (SoapStubAdapter(url=cfg.url, version=API_VERSION,  # type: ignore[no-untyped-call]
                                       sslContext=context, httpConnectionTimeout=cfg.timeout,
                                       connectionPoolTimeout=-1) for _ in range(2))
        # The Login alone is sent on a connection that waits for its answer past `timeout`: vCenter
        # makes the session before it answers, and its cookie comes only in that answer. Cut off by
        # the socket's timeout, the session could be neither used nor logged out: a vCenter slower
        # to log in than `timeout` gathered one a poll until its idle timeout (30 min), up to its
        # session limit. Waited for, a late answer goes to `abandoned` (poll), which logs it out.
        login.scheme = net.patient(login.scheme, LOGIN_WAIT)
        try:
            instance = vim.ServiceInstance("ServiceInstance", stub)  # type: ignore[no-untyped-call]
            content = instance.RetrieveContent()
            manager: vim.SessionManager | None = getattr(content, "sessionManager", None)
            if manager is None:  # a 200 that is no SOAP (a proxy's page)
                raise AdapterError("malformed SOAP response",
                                   f"{cfg.url}: RetrieveContent's answer is no vSphere API answer")
            login.cookie = stub.cookie  # the same session, should RetrieveContent have opened one
            # the API's locale is optional; pyVmomi's stub has it required
            vim.SessionManager(manager._moId, login).Login(  # type: ignore[no-untyped-call, call-arg]
                cfg.username, password)
            stub.cookie = login.cookie
        except Exception as exc:
            raise _convert(exc, cfg.url) from exc
        finally:
            login.DropConnections()  # type: ignore[no-untyped-call]
        return content, stub

    def close(self) -> None:
        self._closed = True
        content, self._content = self._content, None
        if content is not None:
            # By a deadline as a poll's calls, not under the set-up lock: a call in flight of a poll
            # (close comes from another thread) holds it. Behind two stuck calls, it waits its turn.
            self._behind.run(poll_deadline(self.config.timeout), content.sessionManager.Logout,
                             what="logout", thread_name=f"vc-logout-{self.name}", wait_turn=True)

    def _logout_later(self, content: Any) -> None:
        """Log out a session no poll will use, in a thread of its own: a Logout dripping its answer
        kept the late call's thread, one more at every poll."""
        self._behind.start(content.sessionManager.Logout, what="logout", thread_name=f"vc-logout-{self.name}")

    # -- poll -------------------------------------------------------------------------------
    def poll(self) -> PollResult:
        deadline = poll_deadline(self.config.timeout)  # its own reason before the agent's
        try:
            if self._content is not None:
                try:
                    return self._collect(deadline)
                except (vim.fault.NotAuthenticated, SessionExpired):
                    # the session expired between polls (idle timeout, admin, vpxd restart): log in
                    # again, once per poll
                    self._content = None
            # By the deadline, as the session's calls (_on_session). Set here, in the poll's thread,
            # both at once: a login that ends after its poll gave up (or after close()) puts no session
            # back on the adapter, and is logged out at once: left to vCenter's idle timeout (30 min),
            # a vCenter slow to log in piled up a session a poll.
            self._content, self._stub = within(deadline, self._login, what="login", lock=self._setup_lock,
                                               thread_name=f"vc-login-{self.name}",
                                               abandoned=lambda late: self._logout_later(late[0]))
            if self._closed:  # closed (a reload) while this poll logged in: the session is no one's
                self.close()
                raise UnreachableError("closed", f"{self.config.url}: closed during its login")
            return self._collect(deadline)
        except (vim.fault.NotAuthenticated, SessionExpired) as exc:
            self._content = None
            raise AuthError("session refused right after login",
                            f"{self.config.url}: NotAuthenticated right after a fresh login") from exc
        except Exception as exc:
            if not isinstance(exc, AdapterError | vmodl.MethodFault):
                self._content = None  # transport broke: start a new session next time
            raise _convert(exc, self.config.url) from exc

    def _collect(self, deadline: float) -> PollResult:
        content = self._content
        folder, kinds = content.rootFolder, [vim.VirtualMachine, vim.HostSystem]
        view = self._on_session(deadline, "CreateContainerView",
                                lambda: content.viewManager.CreateContainerView(folder, kinds, True))
        progress = vsphere_pc.Progress()

        def retrieval() -> tuple[list[Obj] | None, Exception | None]:  # a late failure: `abandoned` too
            try:
                return self._retrieve(content, spec, deadline - INNER_MARGIN, progress), None
            except Exception as exc:
                return None, exc

        def destroy_later(_: object) -> None:
            # The late retrieval ended (its thread, the lock free): the view goes now. A kept session
            # gathered one view per late poll, never destroyed (a review).
            self._behind.start(view.DestroyView, what="DestroyView",
                               thread_name=f"vc-DestroyView-{self.name}")

        late = False
        try:
            spec = spec_xml(view._moId, getattr(content.customFieldsManager, "_moId", None))
            # In a thread too: a page is read to its end (bounded by vsphere_pc's cut of the socket),
            # so a dripping one would hold the poll past its deadline. On a connection of its own,
            # so a retrieval given up on leaves the session as it is (a vCenter merely slow for its
            # inventory logged in anew each poll).
            try:
                found, failed = within(deadline, retrieval, what="RetrievePropertiesEx",
                                       lock=self._setup_lock, thread_name=f"vc-retrieve-{self.name}",
                                       abandoned=destroy_later)
            except StillWaiting:
                raise
            except UnreachableError as exc:
                late = True
                if progress.arriving:  # said from how far it got, whatever its thread is blocked in
                    raise UnreachableError("timeout", f"{self.config.url}: the retrieval was unfinished "
                                           f"after {self.config.timeout:g}s ({len(progress.objects)} objects "
                                           "read)") from exc
                raise
            if failed is not None:
                raise failed
        finally:
            if not late and self._content is content:  # else its logout, or destroy_later, ends the view
                with contextlib.suppress(Exception):  # views die with the session anyway
                    # late only when the retrieval used up the deadline: it ends behind the lock, and
                    # the session is kept (a healthy vCenter's next poll needs no login)
                    within(deadline, view.DestroyView, what="DestroyView", lock=self._setup_lock,
                           thread_name=f"vc-DestroyView-{self.name}")
        return self._observe(cast(list[Obj], found))

    def _on_session(self, deadline: float, what: str, call: Callable[[], T]) -> T:
        """``call`` on the session's own connection by ``deadline`` (fanout.within): pyVmomi's timeout
        is per socket read, and a server dripping its answer held a poll of timeout 2 s for 19 s while
        the agent said only "previous poll still running". Given up on, the call leaves that connection
        mid-answer: the session is dropped (the next poll logs in anew once the call ended: its thread
        holds the set-up lock), and logged out when the call ends, however it ends."""
        content = self._content

        def settled() -> tuple[T | None, Exception | None]:  # a late failure goes to `abandoned` too
            try:
                return call(), None
            except Exception as exc:
                return None, exc

        try:
            result, failed = within(deadline, settled, what=what, lock=self._setup_lock,
                                    thread_name=f"vc-{what}-{self.name}",
                                    abandoned=lambda _: self._logout_later(content))
        except StillWaiting:  # a late call of an earlier poll: none was made now, the session is intact
            raise
        except UnreachableError:
            self._content = None
            raise
        if failed is not None:
            raise failed
        return cast(T, result)

    def _retrieve(self, content: Any, spec: str, deadline: float,
                  progress: vsphere_pc.Progress | None = None) -> list[Obj]:
        """All pages of the retrieval (vsphere_pc.retrieve) on the poll's session: ``content`` as the
        poll read it, since a close() meanwhile sets the adapter's to None."""
        cfg = self.config
        return vsphere_pc.retrieve(vsphere_pc.Session(
            cfg.url, cfg.timeout, net.ssl_context(cfg.url, cfg.verify_tls, cfg.ca_file), self._stub.cookie,
            self._stub.versionId, content.propertyCollector._moId), spec, deadline, progress)

    def _observe(self, objects: list[Obj]) -> PollResult:
        hosts: dict[str, str] = {}
        fields: dict[str | None, str | None] = {}
        vms: list[tuple[str, dict[str, Any]]] = []
        refused: dict[str, None] = {}  # distinct "Fault privilege" texts of the VMs not read, in order
        unreadable = 0
        partial: list[str] = []
        for kind, moid, props, faults in objects:
            if faults and any(f[1] == "NotAuthenticated" for f in faults):
                raise SessionExpired()
            if kind == "VirtualMachine":
                if faults:
                    # a VM with any property refused is not reported at all: its id, tags or power
                    # state may be the missing part, and a guess would bill or drop the wrong hours
                    unreadable += 1
                    refused.update(dict.fromkeys(fault_names(faults)))
                    self.problems.warn(moid, f"{refusals(faults)}; not reported while refused")
                    continue
                vms.append((moid, props))
            elif kind == "HostSystem":
                hosts[moid] = props.get("name") or moid
            elif kind == "CustomFieldsManager":
                fields = dict(props.get("field") or [])
                if faults:  # without the names, VMs tagged by custom attribute would vanish silently
                    partial.append(f"custom attribute names could not be read: {refusals(faults)}")
        observations = []
        cut_off: dict[str, int] = {}  # TR7 VMs left out, by connection state, in order
        for moid, props in vms:
            obs = self._observation(moid, props, hosts, fields)
            connection = props.get("runtime.connectionState", "connected")
            if obs is not None and connection != "connected":
                # disconnected (its host stopped answering vCenter), orphaned, inaccessible,
                # invalid: vCenter shows the last power state it had, a guess now. Left out, not
                # `unknown`: an observation of any state makes its hour inactive (billing-v1.md §2),
                # where no observation leaves it unknown, which the catalog's bridge policy may fill.
                cut_off[connection] = cut_off.get(connection, 0) + 1
                self.problems.warn(moid, f"{obs.instance}: connection state {connection}; not reported")
            elif obs is not None:
                observations.append(obs)
        if cut_off:
            n = sum(cut_off.values())
            partial.append(f"{'1 VM' if n == 1 else f'{n} VMs'} not connected to vCenter "
                           f"({', '.join(cut_off)}): not reported")
        if unreadable:
            what = "1 VM" if unreadable == 1 else f"{unreadable} VMs"
            partial.insert(0, f"{what} could not be read: {', '.join(refused)}")
        return PollResult(observations=observations, error="; ".join(partial) or None)

    def _observation(self, moid: str, props: dict[str, Any], hosts: dict[str, str],
                     fields: dict[str | None, str | None]) -> Observation | None:
        if props.get("config.template") == "true":
            return None  # a template is a source of instances, never one
        meta = {}
        for key, value in props.get("customValue") or []:
            name = fields.get(key) or ""
            if name.startswith("tr7.") and value is not None:
                meta[name] = value
        # guestinfo.* travels with the VM (clone, OVF, vMotion): it wins over a custom attribute
        for key, value in props.get("config.extraConfig") or []:
            if key and key.startswith("guestinfo.tr7.") and value is not None:
                meta[key[len("guestinfo."):]] = value
        if "tr7.instance" not in meta:
            return None
        uuid = props.get("config.instanceUuid")
        if not uuid:
            self.problems.warn(moid, "tagged tr7.instance but has no config.instanceUuid; VM skipped")
            return None
        found = recognise(meta, uuid, self.problems)
        if found is None:
            return None
        host_ref = props.get("runtime.host")
        host = hosts.get(host_ref, host_ref) if host_ref else None
        state = STATES.get(props.get("runtime.powerState") or "", "unknown")
        return Observation(instance=found[0], vm=uuid, host=host, state=state, capacity=found[1])


ADAPTER = VMwareAdapter
