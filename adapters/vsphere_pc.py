"""vSphere's PropertyCollector spoken directly: the paged RetrievePropertiesEx, read with ElementTree."""

import contextlib
import http.client
import socket
import ssl
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlsplit
from xml.sax.saxutils import escape

from adapters import net
from adapters.base import AdapterError, UnreachableError

PAGE_SIZE = 1000  # objects per RetrievePropertiesEx page; vCenter may return fewer
VM_PROPS = ("config.instanceUuid", "config.template", "config.extraConfig", "customValue",
            "runtime.powerState", "runtime.connectionState", "runtime.host")
V = "{urn:vim25}"
XSI_TYPE = "{http://www.w3.org/2001/XMLSchema-instance}type"
ENVELOPE = (('<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope '
            'xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
            'xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
            '<soapenv:Body>'), '</soapenv:Body></soapenv:Envelope>')


class SessionExpired(Exception):
    """The server no longer knows our session (timed out, terminated, vpxd restarted)."""


Fault = tuple[str, str, str | None]  # missingSet entry: property path, fault type, privilegeId
Obj = tuple[str | None, str, dict[str, Any], list[Fault]]  # type, moid, properties, missing properties
_OBJ, _PROPSET, _MISSING, _NAME, _VAL = (V + t for t in ("obj", "propSet", "missingSet", "name", "val"))
_PATH, _FAULT, _PRIVILEGE = V + "path", f"{V}fault/{V}fault", V + "privilegeId"
_ARRAYS = {"config.extraConfig": "value", "customValue": "value", "field": "name"}  # -> (key, X) pairs


def read_object(oc: ET.Element) -> Obj:
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


def spec_xml(view: str, cfm: str | None) -> str:
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


def fault_names(faults: list[Fault]) -> list[str]:
    """Distinct "NoPermission System.Read" texts of missingSet faults, in order."""
    return list(dict.fromkeys(f"{name} {priv}" if priv else name for _, name, priv in faults))


def refusals(faults: list[Fault]) -> str:
    """"NoPermission System.Read on config.template, customValue": which fault refused which paths."""
    paths: dict[str, list[str]] = {}
    for path, name, priv in faults:
        paths.setdefault(f"{name} {priv}" if priv else name, []).append(path)
    return "; ".join(f"{fault} on {', '.join(p)}" for fault, p in paths.items())


@dataclass(frozen=True)
class Session:
    """What a retrieval needs of a logged-in session: where, how long, its cookie and API version."""

    url: str
    timeout: float
    context: ssl.SSLContext | None
    cookie: str
    version: str
    collector: str  # the PropertyCollector's moid


@dataclass
class Progress:
    """How far a retrieval got: its objects so far, and whether an answer had begun to arrive. The
    poll that gives up on the retrieval says so from here, whatever the thread is blocked in."""

    objects: list[Obj] = field(default_factory=list)
    arriving: bool = False


def retrieve(session: Session, spec: str, deadline: float, progress: Progress | None = None) -> list[Obj]:
    """All pages of RetrievePropertiesEx over the view (and the custom field names).

    pyVmomi's generic deserializer needs ~25 Python objects per VM; on 5,000 VMs that dominates
    the poll. The request is the same PropertyCollector call, sent on the logged-in session,
    and the answer is read with ElementTree, page by page (memory bounded by PAGE_SIZE).

    Past ``deadline``, no page is asked for: the one arriving is read to its end (its token is at
    its end) and the rest of the result is cancelled, so that a session kept for the next poll
    holds no retrieval's results. Cut off mid-page, they were left on the session until it ended.
    A page is read past ``deadline`` for at most the session's timeout more, then dropped as before:
    the thread holds the adapter's set-up lock, and the next polls wait for it.
    """
    this = f'<_this type="PropertyCollector">{escape(session.collector)}</_this>'
    conn = net.connection(session.url, session.timeout, session.context)
    path = urlsplit(session.url).path or "/sdk"
    progress = Progress() if progress is None else progress
    objects = progress.objects
    try:
        body = (f'<RetrievePropertiesEx xmlns="urn:vim25">{this}{spec}'
                f"<options><maxObjects>{PAGE_SIZE}</maxObjects></options></RetrievePropertiesEx>")
        while True:
            token = _call(session, conn, path, body, progress, deadline + session.timeout)
            if token is None:
                return objects
            if time.monotonic() > deadline:
                cancel = (f'<CancelRetrievePropertiesEx xmlns="urn:vim25">{this}'
                          f"<token>{escape(token)}</token></CancelRetrievePropertiesEx>")
                with contextlib.suppress(Exception):  # best effort: the session's end drops them too
                    _call(session, conn, path, cancel, Progress(), deadline + session.timeout)
                raise UnreachableError("timeout", f"{session.url}: the retrieval was unfinished after "
                                                  f"{session.timeout:g}s ({len(objects)} objects read)")
            body = (f'<ContinueRetrievePropertiesEx xmlns="urn:vim25">{this}'
                    f"<token>{escape(token)}</token></ContinueRetrievePropertiesEx>")
    finally:
        conn.close()


def _call(session: Session, conn: http.client.HTTPConnection, path: str, body: str,
          progress: Progress, last: float) -> str | None:
    """POST one PropertyCollector call; append its objects, return the paging token. The socket's
    timeout bounds each read, not the answer (a vCenter sending a byte every 50 ms held a 5 s poll
    for minutes): the poll's deadline bounds the thread that runs this, and ``last`` (a
    time.monotonic() instant) the answer itself. At ``last`` the socket is shut, whatever read the
    call is in: checked between the body's chunks only, headers dripping without end held it for
    ever (a review)."""
    cut = threading.Event()

    def shut() -> None:
        cut.set()
        if conn.sock is not None:
            with contextlib.suppress(OSError):
                # the descriptor's shutdown, not the TLS layer's: that belongs to the reading thread
                socket.socket.shutdown(conn.sock, socket.SHUT_RDWR)

    timer = threading.Timer(max(0.0, last - time.monotonic()), shut)
    timer.daemon = True
    timer.start()
    try:
        return _exchange(session, conn, path, body, progress, last)
    except Exception as exc:
        if cut.is_set():
            raise _unfinished(session, progress) from exc
        raise
    finally:
        timer.cancel()


def _unfinished(session: Session, progress: Progress) -> UnreachableError:
    return UnreachableError("timeout", f"{session.url}: the retrieval was unfinished long after "
                                       f"{session.timeout:g}s ({len(progress.objects)} objects read)")


def _exchange(session: Session, conn: http.client.HTTPConnection, path: str, body: str,
              progress: Progress, last: float) -> str | None:
    """_call's request and answer."""
    objects = progress.objects
    conn.request("POST", path, (ENVELOPE[0] + body + ENVELOPE[1]).encode(), {
        "Cookie": session.cookie, "SOAPAction": session.version, "Accept-Encoding": "gzip",
        "Content-Type": "text/xml; charset=utf-8"})
    resp = conn.getresponse()
    progress.arriving = True
    if resp.status not in (200, 500):
        resp.read()
        raise UnreachableError(f"HTTP {resp.status}",
                               f"{session.url}: HTTP {resp.status} {resp.reason}")
    parser: ET.XMLPullParser[ET.Element] = ET.XMLPullParser(events=("end",))
    root: ET.Element | None = None

    def drain() -> None:
        nonlocal root
        # only "end" events were asked for: each comes with its element, none with a namespace
        for _, el in cast(Iterator[tuple[str, ET.Element]], parser.read_events()):
            root = el  # the last element to end is the envelope
            if el.tag == V + "objects":
                objects.append(read_object(el))
                el.clear()  # memory bounded by one object, not by the page

    for chunk in net.arriving(resp):
        parser.feed(chunk)
        drain()
        if time.monotonic() > last:
            raise _unfinished(session, progress)
    parser.close()
    drain()
    if root is None:
        raise AdapterError("malformed SOAP response", f"{session.url}: empty answer")
    fault = root.find(".//detail/*")
    if resp.status == 500 or fault is not None:
        name = (fault.get(XSI_TYPE) or fault.tag) if fault is not None else "unknown"
        name = name.rsplit("}", 1)[-1].rsplit(":", 1)[-1].removesuffix("Fault")
        if name == "NotAuthenticated":
            raise SessionExpired()
        raise AdapterError(f"vSphere fault {name}",
                           f"{session.url}: {name}: {root.findtext('.//faultstring')}")
    return root.findtext(f".//{V}returnval/{V}token")
