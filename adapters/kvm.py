"""KVM/QEMU adapter: a read-only libvirt connection, `<tr7:license>` domain metadata per domain."""

import contextlib
import errno
import threading
import time
import xml.etree.ElementTree as ET
from typing import Any, Literal

import libvirt
from pydantic import Field, field_validator, model_validator

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
from adapters.tr7meta import KEYS, ProblemLog, recognise

NAMESPACE = "urn:tr7:metering:1"
STATES = {
    libvirt.VIR_DOMAIN_NOSTATE: "unknown",
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "running",  # blocked on a resource: still a running guest
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "stopped",  # being shut down
    libvirt.VIR_DOMAIN_SHUTOFF: "stopped",
    libvirt.VIR_DOMAIN_CRASHED: "stopped",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "suspended",
}
AUTH_CODES = {libvirt.VIR_ERR_AUTH_FAILED, libvirt.VIR_ERR_AUTH_CANCELLED, libvirt.VIR_ERR_AUTH_UNAVAILABLE}
DENIED_CODES = {libvirt.VIR_ERR_OPERATION_DENIED, libvirt.VIR_ERR_ACCESS_DENIED}
# What the auth callback can answer: SASL's user name and password (digest-md5, scram, plain).
CREDENTIALS = {libvirt.VIR_CRED_AUTHNAME: "a user name", libvirt.VIR_CRED_PASSPHRASE: "a password"}
GROUP_HINT = "is the agent user in the libvirt group?"
CONFIG_CODES = {libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_ERR_INVALID_ARG, libvirt.VIR_ERR_XML_ERROR,
                libvirt.VIR_ERR_XML_DETAIL,
                libvirt.VIR_ERR_CONFIG_UNSUPPORTED, libvirt.VIR_ERR_NO_SUPPORT}
GONE_CODES = {libvirt.VIR_ERR_NO_DOMAIN}  # undefined between listAllDomains and our read
# Remote connections: a probe every 5 s, closed after 3 unanswered ones. Without keepalive a call
# to a frozen daemon or across a dead network path blocks until TCP gives up (many minutes).
KEEPALIVE = (5, 3)
_loop_lock = threading.Lock()
_loop_started = False


def _quiet(_ctx: Any, _err: Any) -> None:
    """libvirt prints every error to stderr by default; we convert and log them ourselves."""


libvirt.registerErrorHandler(_quiet, None)


def _event_loop() -> None:
    """Keepalive and close notifications need libvirt's event loop: one daemon thread per process."""
    global _loop_started
    with _loop_lock:
        if not _loop_started:
            libvirt.virEventRegisterDefaultImpl()
            threading.Thread(target=_run_events, name="libvirt-events", daemon=True).start()
            _loop_started = True


def _run_events() -> None:
    while True:
        libvirt.virEventRunDefaultImpl()


class KVMConfig(AdapterConfig):
    """One libvirt daemon (local or remote) polled read-only."""

    platform: Literal["kvm"] = Field(default="kvm", description="This adapter: kvm")
    uri: str = Field(default="qemu:///system",
                     description="libvirt connection URI: qemu:///system (local), "
                                 "qemu+ssh://user@host/system or qemu+tls://host/system (remote); "
                                 "opened read-only")
    username: str | None = Field(default=None, min_length=1,
                                 description="SASL user name, for a daemon with auth_tcp/auth_tls = \"sasl\" "
                                             "(not needed for local sockets, ssh or plain TLS)")
    password: str | None = Field(default=None, description="SASL password (prefer password_file)")
    password_file: str | None = Field(default=None, description="File holding the SASL password; a relative "
                                      "name is looked up in $CREDENTIALS_DIRECTORY (systemd LoadCredential)")

    @field_validator("uri")
    @classmethod
    def _uri(cls, v: str) -> str:
        if ":" not in v or not v.strip():
            raise ValueError("uri must be a libvirt URI such as qemu:///system")
        return v

    @model_validator(mode="after")
    def _credentials(self) -> "KVMConfig":
        if self.password is not None and self.password_file is not None:
            raise ValueError("give password or password_file, not both")
        if (self.username is None) != (self.password is None and self.password_file is None):
            raise ValueError("username and password (or password_file) go together")
        return self


def _convert(exc: libvirt.libvirtError, uri: str, doing: str, auth_hint: str = GROUP_HINT) -> AdapterError:
    code = exc.get_error_code()
    text = exc.get_error_message() or str(exc)
    diagnostic = f"{uri}: {doing}: {text}"
    if code in AUTH_CODES:
        return AuthError("authentication failed", f"{diagnostic} ({auth_hint})")
    if code in DENIED_CODES:
        return AuthError("access denied", f"{diagnostic} ({GROUP_HINT})")
    if code in CONFIG_CODES or (code == libvirt.VIR_ERR_INTERNAL_ERROR and "invalid URI" in text):
        # qemu://system (two slashes) is libvirt's "internal error: invalid URI", not a config code
        return ConfigError(f"cannot use {uri}", diagnostic)
    if code == libvirt.VIR_ERR_SYSTEM_ERROR and exc.get_int1() in (errno.EACCES, errno.EPERM):
        # the socket is there but this user may not open it (unix_sock_ro_perms "0770"): the
        # libvirt group, not a daemon to start
        return AuthError("access denied", f"{diagnostic} ({GROUP_HINT})")
    if code == libvirt.VIR_ERR_SYSTEM_ERROR or exc.get_error_domain() == libvirt.VIR_FROM_RPC:
        return UnreachableError("unreachable", diagnostic + " (is libvirtd running and its read-only "
                                                            "socket reachable?)")
    return AdapterError(f"libvirt error {code}", diagnostic)


class KVMAdapter(Adapter):
    """Finds TR7 appliances among the domains of one libvirt connection."""

    platform = "kvm"
    Config = KVMConfig
    config: KVMConfig

    def __init__(self, config: KVMConfig) -> None:
        super().__init__(config)
        self.problems = ProblemLog(config.name)
        self._conn: libvirt.virConnect | None = None
        self._close_reason: int | None = None  # set by libvirt when it closes the connection
        self._connect_lock = SetupLock()  # fanout.within: one connection attempt at a time
        self._behind = Behind(self.name)  # connections closing behind their polls
        self._shut = False  # close() was called: a connection opened after it is closed at once

    def _connected(self, deadline: float) -> libvirt.virConnect:
        """_connection by ``deadline``: openAuth has no timeout of its own, and keepalive starts
        only once it returns, so a frozen libvirtd held the poll until it woke up (the poll after a
        keepalive failure reconnects, exactly then). Late: UnreachableError, and the attempt goes
        on in its thread, holding the lock, so the next poll never opens a second one beside it."""
        return within(deadline, self._connection, what="connecting to libvirtd",
                      lock=self._connect_lock, thread_name=f"kvm-connect-{self.name}")

    def _connection(self) -> libvirt.virConnect:
        if self._conn is not None:
            try:
                if self._conn.isAlive():
                    return self._conn
            except libvirt.libvirtError:
                pass
            self._drop()
        _event_loop()
        cfg = self.config
        try:
            password = cfg.secret(cfg.password, cfg.password_file, "password")
        except SecretError as exc:
            raise ConfigError(str(exc)) from exc
        answers = {libvirt.VIR_CRED_AUTHNAME: cfg.username, libvirt.VIR_CRED_PASSPHRASE: password}
        missing: list[str] = []

        def answer(creds: list[list[Any]], _opaque: Any) -> int:
            # SASL needs a callback (openReadOnly has none: "No worthy mechs"); libvirt's default one
            # would prompt on the terminal. Answer from the config or fail; libvirt asks only for what
            # an auth.conf (?authfile= in the URI, LIBVIRT_AUTH_FILE) did not already give.
            for cred in creds:
                if answers.get(cred[0]) is None:
                    missing.append(CREDENTIALS.get(cred[0], f"credential type {cred[0]}"))
                else:
                    cred[4] = answers[cred[0]]
            return -1 if missing else 0

        try:
            # read-only: the agent only lists; libvirtd allows this to the libvirt group (or polkit)
            conn = libvirt.openAuth(cfg.uri, [list(CREDENTIALS), answer, None], libvirt.VIR_CONNECT_RO)
        except libvirt.libvirtError as exc:
            if missing:
                raise AuthError("authentication failed", f"{cfg.uri}: cannot connect: libvirtd asks for "
                                f"{' and '.join(missing)}; set username and password_file") from exc
            hint = "wrong username or password?" if cfg.username else GROUP_HINT
            raise _convert(exc, cfg.uri, "cannot connect", hint) from exc
        self._close_reason = None
        with contextlib.suppress(libvirt.libvirtError):  # local drivers (test:///) have no keepalive
            conn.setKeepAlive(*KEEPALIVE)
        with contextlib.suppress(libvirt.libvirtError):
            conn.registerCloseCallback(self._closed, None)
        self._conn = conn
        if self._shut:
            # Opened after close() (a reload gave up on this adapter while its connect waited): nobody
            # would close it, and each reload during an outage left one to the process's end. Set
            # first, checked after: close() either sees it or is seen (close sets, then drops).
            self._drop()
            raise UnreachableError("closed", f"{cfg.uri}: the adapter was closed while it connected")
        return conn

    def _closed(self, _conn: Any, reason: int, _opaque: Any) -> None:
        self._close_reason = reason

    def _drop(self, deadline: float | None = None) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return

        def close() -> None:
            with contextlib.suppress(libvirt.libvirtError):  # local driver, or already dead
                conn.unregisterCloseCallback()
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()

        # Both are calls to a remote daemon on a connection alive (its answer dripped held close() as
        # long): by a deadline, as a poll's calls, not under the connect lock (a listing left running
        # may hold it). Late, they end in their thread.
        self._behind.run(poll_deadline(self.config.timeout) if deadline is None else deadline, close,
                         what="closing the libvirt connection", thread_name=f"kvm-close-{self.name}",
                         wait_turn=deadline is None)  # close(): waited for, also behind stuck ones

    def close(self) -> None:
        self._shut = True
        self._drop()

    def poll(self) -> PollResult:
        deadline = poll_deadline(self.config.timeout)
        conn = self._connected(deadline)
        try:
            return self._listed(conn, deadline)
        except libvirt.libvirtError as exc:
            try:
                alive = bool(conn.isAlive())
            except libvirt.libvirtError:
                alive = False
            if alive:
                raise _convert(exc, self.config.uri, "poll failed") from exc
            if self._close_reason == libvirt.VIR_CONNECT_CLOSE_REASON_KEEPALIVE:
                # the daemon (or the path to it) is hung: reconnecting now would block on it
                self._drop(deadline)
                raise UnreachableError("no answer", f"{self.config.uri}: libvirtd stopped answering "
                                       "(keepalive timeout); reconnecting at the next poll") from exc
        # the connection died under us (libvirtd restart, ssh drop): reconnect once
        self._drop(deadline)
        conn = self._connected(deadline)
        try:
            return self._listed(conn, deadline)
        except libvirt.libvirtError as exc:
            self._drop(deadline)
            raise _convert(exc, self.config.uri, "poll failed after reconnecting") from exc

    def _listed(self, conn: libvirt.virConnect, deadline: float) -> PollResult:
        """_collect by ``deadline``: a call has no timeout of its own, and keepalive ends only a daemon
        (or path) that stopped answering: one answering a byte at a time, or slowly for its thousands of
        domains (a call or two each), held a poll of 2 s for 25 s and more while the agent said only
        "previous poll still running". Late: UnreachableError; the listing goes on in its thread
        (stopping at its next domain), holding the lock, so the next poll waits for it."""
        observations: list[Observation] = []
        listed: list[bool] = []  # the domains' list came: the poll then says how far it got
        try:
            return within(deadline,
                          lambda: self._collect(conn, deadline - INNER_MARGIN, observations, listed),
                          what="listing the domains", lock=self._connect_lock,
                          thread_name=f"kvm-list-{self.name}")
        except StillWaiting:
            raise
        except UnreachableError as exc:
            if not listed:
                raise
            # whatever call the listing is blocked in (a domain's answer slower than the margin of
            # its own check): said from how far it got, not as a daemon that never answered
            raise self._unfinished(observations) from exc

    def _unfinished(self, observations: list[Observation]) -> UnreachableError:
        return UnreachableError("timeout", f"{self.config.uri}: listing unfinished after "
                                f"{self.config.timeout:g}s ({len(observations)} TR7 instances read)")

    def _collect(self, conn: libvirt.virConnect, deadline: float, observations: list[Observation],
                 listed: list[bool]) -> PollResult:
        host = conn.getHostname()
        domains = conn.listAllDomains(0)
        listed.append(True)
        for dom in domains:
            if time.monotonic() > deadline:  # its poll gives up on it now: no more calls for nobody
                raise self._unfinished(observations)
            obs = self._observation(dom, host)
            if obs is not None:
                observations.append(obs)
        return PollResult(observations=list(observations))

    def _observation(self, dom: libvirt.virDomain, host: str) -> Observation | None:
        uuid = dom.UUIDString()
        try:
            xml = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NAMESPACE)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() in {libvirt.VIR_ERR_NO_DOMAIN_METADATA, *GONE_CODES}:
                return None  # not ours (or gone)
            raise
        meta = self._parse(xml, uuid)
        if meta is None:
            return None
        found = recognise(meta, uuid, self.problems)
        if found is None:
            return None
        try:
            state_code = dom.state()[0]
        except libvirt.libvirtError as exc:
            if exc.get_error_code() in GONE_CODES:
                return None
            raise
        instance, capacity = found
        return Observation(instance=instance, vm=uuid, host=host,
                           state=STATES.get(state_code, "unknown"), capacity=capacity)

    def _parse(self, xml: str, uuid: str) -> dict[str, str] | None:
        """`<license instance=".." bundle=".." .../>` -> {"tr7.instance": .., ...}."""
        try:
            elem = ET.fromstring(xml)
        except ET.ParseError as exc:
            self.problems.warn(uuid, f"{NAMESPACE} metadata is not XML ({exc}); VM skipped")
            return None
        if elem.tag.rsplit("}", 1)[-1] != "license":
            self.problems.warn(uuid, f"{NAMESPACE} metadata element is <{elem.tag}>, not <license>; "
                                     "VM skipped")
            return None
        if "instance" not in elem.attrib:
            self.problems.warn(uuid, "<tr7:license> has no instance attribute; VM skipped")
            return None
        return {key: elem.attrib[key[4:]] for key in KEYS if key[4:] in elem.attrib}


ADAPTER = KVMAdapter
