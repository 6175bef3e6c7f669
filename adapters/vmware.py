"""VMware vSphere adapter: one paged PropertyCollector retrieval over a ContainerView per poll."""

import contextlib
import http.client
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from typing import Any, Literal, TypeVar, cast
from urllib.parse import urlsplit
from xml.sax.saxutils import escape

from pydantic import Field, field_validator, model_validator
from pyVmomi import vim, vmodl
from pyVmomi.SoapAdapter import SoapStubAdapter

from adapters import net
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
from adapters.tr7meta import ProblemLog, recognise

# vim25/6.5: every property read here exists since vSphere 4, and vCenter 6.5 .. 8.x accept it.
# Pinned (no vimServiceVersions.xml negotiation) because pyVmomi's negotiation has no timeout.
API_VERSION = "vim.version.version11"
PAGE_SIZE = 1000  # objects per RetrievePropertiesEx page; vCenter may return fewer
STATES = {"poweredOn": "running", "poweredOff": "stopped", "suspended": "suspended"}
VM_PROPS = ("config.instanceUuid", "config.template", "config.extraConfig", "customValue",
            "runtime.powerState", "runtime.connectionState", "runtime.host")
V = "{urn:vim25}"
XSI_TYPE = "{http://www.w3.org/2001/XMLSchema-instance}type"
ENVELOPE = (('<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope '
            'xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
            'xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
            '<soapenv:Body>'), '</soapenv:Body></soapenv:Envelope>')
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


class _SessionExpired(Exception):
    """The server no longer knows our session (timed out, terminated, vpxd restarted)."""


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


Fault = tuple[str, str, str | None]  # missingSet entry: property path, fault type, privilegeId
Obj = tuple[str | None, str, dict[str, Any], list[Fault]]  # type, moid, properties, missing properties
_OBJ, _PROPSET, _MISSING, _NAME, _VAL = (V + t for t in ("obj", "propSet", "missingSet", "name", "val"))
_PATH, _FAULT, _PRIVILEGE = V + "path", f"{V}fault/{V}fault", V + "privilegeId"
_ARRAYS = {"config.extraConfig": "value", "customValue": "value", "field": "name"}  # -> (key, X) pairs


def _read_object(oc: ET.Element) -> Obj:
    """One <objects> element -> (type, moid, {property: python value}, [(path, fault, privilege)]).

    Children are walked directly (no ElementPath): this runs once per VM on every poll."""
    kind: str | None = None
    moid = ""
    props: dict[str, Any] = {}
    faults: list[Fault] = []
    for child in oc:
        if child.tag == _PROPSET:
            name = val = None
            for c in child:
                if c.tag == _NAME:
                    name = c.text
                elif c.tag == _VAL:
                    val = c
            if name is None or val is None:
                continue
            second = _ARRAYS.get(name)
            props[name] = ([(item.findtext(V + "key"), item.findtext(V + second)) for item in val]
                           if second else val.text)
        elif child.tag == _OBJ:
            kind, moid = child.get("type"), child.text or ""
        elif child.tag == _MISSING:
            fault = child.find(_FAULT)
            name = ((fault.get(XSI_TYPE) if fault is not None else None) or "?").rsplit(":", 1)[-1]
            privilege = fault.findtext(_PRIVILEGE) if fault is not None else None
            faults.append((child.findtext(_PATH) or "?", name, privilege))
    return kind, moid, props, faults


def _spec_xml(view: str, cfm: str | None) -> str:
    """PropertyFilterSpec: VMs and hosts of the view (one traversal), plus custom field names."""
    paths = "".join(f"<pathSet>{p}</pathSet>" for p in VM_PROPS)
    spec = (f"<specSet><propSet><type>VirtualMachine</type>{paths}</propSet>"
            "<propSet><type>HostSystem</type><pathSet>name</pathSet></propSet>")
    if cfm:  # absent on a standalone ESXi host
        spec += "<propSet><type>CustomFieldsManager</type><pathSet>field</pathSet></propSet>"
    spec += (f'<objectSet><obj type="ContainerView">{escape(view)}</obj><skip>true</skip>'
             '<selectSet xsi:type="TraversalSpec"><name>view</name><type>ContainerView</type>'
             "<path>view</path><skip>false</skip></selectSet></objectSet>")
    if cfm:
        spec += f'<objectSet><obj type="CustomFieldsManager">{escape(cfm)}</obj></objectSet>'
    return spec + "</specSet>"


def _fault_names(faults: list[Fault]) -> list[str]:
    """Distinct "NoPermission System.Read" texts of missingSet faults, in order."""
    return list(dict.fromkeys(f"{name} {priv}" if priv else name for _, name, priv in faults))


def _refusals(faults: list[Fault]) -> str:
    """"NoPermission System.Read on config.template, customValue": which fault refused which paths."""
    paths: dict[str, list[str]] = {}
    for path, name, priv in faults:
        paths.setdefault(f"{name} {priv}" if priv else name, []).append(path)
    return "; ".join(f"{fault} on {', '.join(p)}" for fault, p in paths.items())


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
            # By a deadline as a poll's calls (the agent closes its adapters one by one), not under the
            # set-up lock: a call in flight of a poll (close comes from another thread) holds it
            self._behind.run(poll_deadline(self.config.timeout), content.sessionManager.Logout,
                             what="logout", thread_name=f"vc-logout-{self.name}")

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
                except (vim.fault.NotAuthenticated, _SessionExpired):
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
        except (vim.fault.NotAuthenticated, _SessionExpired) as exc:
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
        try:
            spec = _spec_xml(view._moId, getattr(content.customFieldsManager, "_moId", None))
            # In a thread too: its pages stopped at the deadline, their headers did not (3 s took
            # 6.5 s). On a connection of its own, so a retrieval given up on leaves the session as it
            # is (a vCenter merely slow for its inventory logged in anew each poll). Its own checks end
            # a moment before the thread is given up on: theirs is the diagnostic said ("N objects").
            found = within(deadline, lambda: self._retrieve(content, spec, deadline - INNER_MARGIN),
                           what="RetrievePropertiesEx", lock=self._setup_lock,
                           thread_name=f"vc-retrieve-{self.name}")
        finally:
            if self._content is content:  # else the session was dropped: its logout ends the view
                with contextlib.suppress(Exception):  # views die with the session anyway
                    # late only when the retrieval used up the deadline: it ends behind the lock, and
                    # the session is kept (a healthy vCenter's next poll needs no login)
                    within(deadline, view.DestroyView, what="DestroyView", lock=self._setup_lock,
                           thread_name=f"vc-DestroyView-{self.name}")
        return self._observe(found)

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

        waiting = self._setup_lock.locked()  # a late call of an earlier poll: none is made now
        try:
            result, failed = within(deadline, settled, what=what, lock=self._setup_lock,
                                    thread_name=f"vc-{what}-{self.name}",
                                    abandoned=lambda _: self._logout_later(content))
        except UnreachableError:
            if not waiting:  # not after a call that was never made: that session was no one's to end
                self._content = None
            raise
        if failed is not None:
            raise failed
        return cast(T, result)

    def _retrieve(self, content: Any, spec: str, deadline: float) -> list[Obj]:
        """All pages of RetrievePropertiesEx over the view (and the custom field names).

        pyVmomi's generic deserializer needs ~25 Python objects per VM; on 5,000 VMs that dominates
        the poll. The request is the same PropertyCollector call, sent on the logged-in session,
        and the answer is read with ElementTree, page by page (memory bounded by PAGE_SIZE).
        """
        # the session's content as the poll read it: a close() meanwhile sets the adapter's to None
        this = f'<_this type="PropertyCollector">{escape(content.propertyCollector._moId)}</_this>'
        cfg = self.config
        conn = net.connection(cfg.url, cfg.timeout, net.ssl_context(cfg.url, cfg.verify_tls, cfg.ca_file))
        path = urlsplit(cfg.url).path or "/sdk"
        objects: list[Obj] = []
        try:
            body = (f'<RetrievePropertiesEx xmlns="urn:vim25">{this}{spec}'
                    f"<options><maxObjects>{PAGE_SIZE}</maxObjects></options></RetrievePropertiesEx>")
            while True:
                token = self._call(conn, path, body, objects, deadline)
                if token is None:
                    return objects
                if time.monotonic() > deadline:
                    cancel = (f'<CancelRetrievePropertiesEx xmlns="urn:vim25">{this}'
                              f"<token>{escape(token)}</token></CancelRetrievePropertiesEx>")
                    with contextlib.suppress(Exception):  # sent is enough: its answer is not awaited
                        self._call(conn, path, cancel, [], deadline)
                    raise UnreachableError("timeout", f"{self.config.url}: retrieval exceeded "
                                                      f"{self.config.timeout}s after {len(objects)} objects")
                body = (f'<ContinueRetrievePropertiesEx xmlns="urn:vim25">{this}'
                        f"<token>{escape(token)}</token></ContinueRetrievePropertiesEx>")
        finally:
            conn.close()

    def _call(self, conn: http.client.HTTPConnection, path: str, body: str, objects: list[Obj],
              deadline: float) -> str | None:
        """POST one PropertyCollector call; append its objects, return the paging token. The answer
        must have arrived by ``deadline``: the socket's timeout bounds each read, not the answer,
        and a vCenter that sent a byte every 50 ms held a 5 s poll for minutes."""
        conn.request("POST", path, (ENVELOPE[0] + body + ENVELOPE[1]).encode(), {
            "Cookie": self._stub.cookie, "SOAPAction": self._stub.versionId, "Accept-Encoding": "gzip",
            "Content-Type": "text/xml; charset=utf-8"})
        resp = conn.getresponse()
        if resp.status not in (200, 500):
            resp.read()
            raise UnreachableError(f"HTTP {resp.status}",
                                   f"{self.config.url}: HTTP {resp.status} {resp.reason}")
        parser: ET.XMLPullParser[ET.Element] = ET.XMLPullParser(events=("end",))
        root: ET.Element | None = None

        def drain() -> None:
            nonlocal root
            # only "end" events were asked for: each comes with its element, none with a namespace
            for _, el in cast(Iterator[tuple[str, ET.Element]], parser.read_events()):
                root = el  # the last element to end is the envelope
                if el.tag == V + "objects":
                    objects.append(_read_object(el))
                    el.clear()  # memory bounded by one object, not by the page

        for chunk in net.arriving(resp):
            parser.feed(chunk)
            drain()
            if time.monotonic() > deadline:
                raise UnreachableError("timeout", f"{self.config.url}: the answer was still arriving after "
                                                  f"{self.config.timeout:g}s ({len(objects)} objects read)")
        parser.close()
        drain()
        if root is None:
            raise AdapterError("malformed SOAP response", f"{self.config.url}: empty answer")
        fault = root.find(".//detail/*")
        if resp.status == 500 or fault is not None:
            name = (fault.get(XSI_TYPE) or fault.tag) if fault is not None else "unknown"
            name = name.rsplit("}", 1)[-1].rsplit(":", 1)[-1].removesuffix("Fault")
            if name == "NotAuthenticated":
                raise _SessionExpired()
            raise AdapterError(f"vSphere fault {name}",
                               f"{self.config.url}: {name}: {root.findtext('.//faultstring')}")
        return root.findtext(f".//{V}returnval/{V}token")

    def _observe(self, objects: list[Obj]) -> PollResult:
        hosts: dict[str, str] = {}
        fields: dict[str | None, str | None] = {}
        vms: list[tuple[str, dict[str, Any]]] = []
        refused: dict[str, None] = {}  # distinct "Fault privilege" texts of the VMs not read, in order
        unreadable = 0
        partial: list[str] = []
        for kind, moid, props, faults in objects:
            if faults and any(f[1] == "NotAuthenticated" for f in faults):
                raise _SessionExpired()
            if kind == "VirtualMachine":
                if faults:
                    # a VM with any property refused is not reported at all: its id, tags or power
                    # state may be the missing part, and a guess would bill or drop the wrong hours
                    unreadable += 1
                    refused.update(dict.fromkeys(_fault_names(faults)))
                    self.problems.warn(moid, f"{_refusals(faults)}; not reported while refused")
                    continue
                vms.append((moid, props))
            elif kind == "HostSystem":
                hosts[moid] = props.get("name") or moid
            elif kind == "CustomFieldsManager":
                fields = dict(props.get("field") or [])
                if faults:  # without the names, VMs tagged by custom attribute would vanish silently
                    partial.append(f"custom attribute names could not be read: {_refusals(faults)}")
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
