"""Proxmox VE adapter: QEMU VMs of a cluster through the PVE JSON API (proxmoxer, https backend)."""

import logging
import time
from collections import defaultdict, deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, Literal
from urllib.parse import urlsplit

import certifi
import proxmoxer
import requests
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
from adapters.credentials import SecretError, readable_file
from adapters.fanout import SetupLock, Turns, poll_deadline, within
from adapters.tr7meta import ProblemLog, parse_notes, recognise

log = logging.getLogger("tr7.adapters.proxmox")

# QMP run states (qmpstatus of status/current) of a VM whose QEMU process runs. States where the
# guest's vCPUs are halted (migration ends, snapshots, I/O errors, start with -S) count as paused.
QMP_STATES = {
    "running": "running",
    "paused": "paused", "prelaunch": "paused", "io-error": "paused", "debug": "paused",
    "inmigrate": "paused", "postmigrate": "paused", "finish-migrate": "paused",
    "save-vm": "paused", "restore-vm": "paused",
    "suspended": "suspended",  # guest suspend-to-RAM (S3)
}


class ProxmoxConfig(AdapterConfig):
    """A Proxmox VE cluster (or single node), read through its API on port 8006."""

    platform: Literal["proxmox"] = Field(description="This adapter: proxmox")
    url: str = Field(description="API endpoint of any cluster node, e.g. https://pve.example:8006")
    token_id: str | None = Field(
        default=None, description="API token id USER@REALM!TOKENID (preferred over username/password)")
    token_secret: str | None = Field(
        default=None, description="API token secret (UUID), inline (prefer token_secret_file)")
    token_secret_file: str | None = Field(
        default=None, description="File holding the API token secret (relative: $CREDENTIALS_DIRECTORY)")
    username: str | None = Field(default=None, description="USER@REALM for ticket login, if no token")
    password: str | None = Field(
        default=None, description="Password of username, inline (prefer password_file)")
    password_file: str | None = Field(
        default=None, description="File holding the password (relative: $CREDENTIALS_DIRECTORY)")
    verify_tls: bool = Field(default=True, description="Verify the API's TLS certificate")
    ca_file: str | None = Field(
        default=None, description="PEM CA that signed the API certificate (e.g. pve-root-ca.pem)")
    # at most 10: the size of the requests connection pool per host
    workers: int = Field(default=8, ge=1, le=10, description="VM configs read concurrently per poll (1..10)")

    @field_validator("url")
    @classmethod
    def _https_url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError("url must be https://HOST[:PORT]")
        if parts.path.rstrip("/") not in ("", "/api2/json") or parts.query:
            raise ValueError("url must be https://HOST[:PORT] without a path")
        return v

    @model_validator(mode="after")
    def _one_auth(self) -> "ProxmoxConfig":
        if (self.token_id is None) == (self.username is None):
            raise ValueError("give token_id (with token_secret or token_secret_file) or username, not both")
        if self.token_id is not None:
            if "!" not in self.token_id or "@" not in self.token_id.split("!", 1)[0]:
                raise ValueError("token_id must look like USER@REALM!TOKENID")
            if self.token_secret is None and self.token_secret_file is None:
                raise ValueError("token_id needs token_secret or token_secret_file")
        elif self.password is None and self.password_file is None:
            raise ValueError("username needs password or password_file")
        if self.ca_file is not None and not self.verify_tls:
            raise ValueError("ca_file is only used when verify_tls is true")
        return self


def _convert(exc: BaseException, what: str) -> AdapterError:
    """Vendor/transport exception -> AdapterError (the one place that knows requests/proxmoxer)."""
    if isinstance(exc, AdapterError):
        return exc
    if isinstance(exc, proxmoxer.AuthenticationError):
        return AuthError("authentication failed", f"{what}: {exc}")
    if isinstance(exc, proxmoxer.ResourceException):
        if exc.status_code == 401:
            return AuthError("authentication failed", f"{what}: {exc}")
        if exc.status_code == 403:
            return AuthError("permission denied", f"{what}: {exc}")
        if exc.status_code >= 595:  # pveproxy could not reach the node it proxies to
            return UnreachableError(f"{what}: node unreachable ({exc.status_code})", str(exc))
        return AdapterError(f"{what}: HTTP {exc.status_code}", str(exc))
    if isinstance(exc, requests.exceptions.SSLError):
        return UnreachableError("TLS verification failed", f"{what}: {exc}")
    if isinstance(exc, requests.exceptions.Timeout):
        return UnreachableError("timeout", f"{what}: {exc}")
    if isinstance(exc, requests.exceptions.ConnectionError):
        return UnreachableError("connection failed", f"{what}: {exc}")
    return AdapterError(f"{what}: {type(exc).__name__}", f"{what}: {exc}")


def _malformed(data: Any) -> bool:
    # proxmoxer's serializer turns an undecodable body into {"errors": <raw bytes>}
    return isinstance(data, dict) and isinstance(data.get("errors"), bytes)


class ProxmoxAdapter(Adapter):
    platform = "proxmox"
    Config = ProxmoxConfig
    config: ProxmoxConfig

    def __init__(self, config: AdapterConfig) -> None:
        super().__init__(config)
        self.problems = ProblemLog(config.name)
        self._api: Any = None
        self._setup_lock = SetupLock()  # fanout.within: one login or list at a time
        # The VMs a poll left unread are read first at the next one (fanout.Turns, by node/vmid):
        # queued in the API's order, the same ~80 of 120 VMs were left unread at every poll.
        self._turns = Turns()
        # Reads of earlier polls given up on and still running, with their node: they count against
        # their node's share (a node dripping its answers forever added `workers` threads a poll).
        self._earlier: dict[Future[tuple[Observation | None, str | None]], str] = {}

    def _connect(self) -> Any:
        if self._api is not None:
            return self._api
        c = self.config
        parts = urlsplit(c.url)
        host = parts.netloc.rsplit("@", 1)[-1]
        # Always a path when verifying: proxmoxer's ticket login (and its hourly renewal) goes
        # through requests.post, whose session reads REQUESTS_CA_BUNDLE from the environment
        # whenever verify is True; only ca_file (else certifi's bundle) decides, as documented.
        verify: bool | str = (c.ca_file or certifi.where()) if c.verify_tls else False
        # The API is on the management network: environment proxies (set for the collector) must
        # not apply; None entries stop requests from filling them in from HTTPS_PROXY/ALL_PROXY.
        common: dict[str, Any] = {"backend": "https", "service": "PVE", "verify_ssl": verify,
                                  "timeout": c.timeout, "proxies": {"http": None, "https": None, "all": None}}
        try:
            if c.verify_tls and c.ca_file:
                readable_file(c.ca_file, "ca_file")
            if c.token_id is not None:
                user, token_name = c.token_id.split("!", 1)
                secret = c.secret(c.token_secret, c.token_secret_file, "token_secret")
                api = proxmoxer.ProxmoxAPI(host, user=user, token_name=token_name, token_value=secret,
                                           **common)
            else:
                password = c.secret(c.password, c.password_file, "password")
                # ticket login happens here (POST /access/ticket); proxmoxer renews it hourly
                api = proxmoxer.ProxmoxAPI(host, user=c.username, password=password, **common)
        except SecretError as exc:
            raise ConfigError(str(exc)) from exc
        except Exception as exc:
            raise _convert(exc, "login") from exc
        # per-request environment settings would override the session's: no proxies, no
        # REQUESTS_CA_BUNDLE, no .netrc; only what the config says
        api._store["session"].trust_env = False
        self._api = api
        return api

    def poll(self) -> PollResult:
        deadline = poll_deadline(self.config.timeout)
        # The login and the cluster's list within the deadline: requests' timeout bounds each
        # read, not the answer, and an API that drips its bytes held a poll ~50x its timeout.
        api = within(deadline, self._connect, what="login", lock=self._setup_lock,
                     thread_name=f"pve-login-{self.name}")
        try:
            resources = within(deadline, lambda: api.cluster.resources.get(type="vm"),
                               what="cluster/resources", lock=self._setup_lock,
                               thread_name=f"pve-list-{self.name}")
        except AdapterError:
            raise
        except Exception as exc:
            err = _convert(exc, "cluster/resources")
            if isinstance(err, AuthError):
                self._api = None  # a ticket may have expired: log in again next poll
            raise err from exc
        if not isinstance(resources, list) or not all(isinstance(r, dict) for r in resources):
            raise AdapterError("cluster/resources: malformed response")
        # Only QEMU VMs are appliances (LXC cannot run one); templates are never instances.
        candidates = [r for r in resources if r.get("type") == "qemu" and not r.get("template")
                      and r.get("node") and r.get("vmid") is not None]
        errors: list[str] = []
        observations: list[Observation] = []
        if candidates:
            self._read_all(api, candidates, deadline, observations, errors)
        observations.sort(key=lambda o: o.vm)
        return PollResult(observations=observations, error=_summary(errors))

    def _read_all(self, api: Any, candidates: list[dict[str, Any]], deadline: float,
                  observations: list[Observation], errors: list[str]) -> None:
        workers = self.config.workers
        queues: dict[str, deque[dict[str, Any]]] = defaultdict(deque)
        by_key = {_vm_key(r): r for r in candidates}
        order = self._turns.order(list(by_key))
        for k in order:
            queues[str(by_key[k]["node"])].append(by_key[k])
        # At most a share of the workers per node: a hung node held every worker with its own
        # requests (each waits up to the timeout) and the healthy nodes' VMs went unread.
        cap = max(1, workers // len(queues)) if len(queues) > 1 else workers
        inflight: dict[str, int] = defaultdict(int)
        futures: dict[Future[tuple[Observation | None, str | None]], dict[str, Any]] = {}
        done: dict[Future[tuple[Observation | None, str | None]], dict[str, Any]] = {}
        earlier = self._earlier = {f: n for f, n in self._earlier.items() if not f.done()}
        for node in earlier.values():
            inflight[node] += 1
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"pve-{self.name}")

        def fill() -> None:
            for node, queue in queues.items():
                while queue and inflight[node] < cap and len(futures) < workers:
                    r = queue.popleft()
                    futures[pool.submit(self._read_vm, api, r)] = r
                    inflight[node] += 1

        try:
            fill()
            # An earlier read is waited for only while its node has VMs queued behind it: a poll that
            # read every VM waited for it until the deadline (a review)
            while ((futures or any(queues[n] for n in set(earlier.values())))
                   and (left := deadline - time.monotonic()) > 0):
                finished, _ = wait([*futures, *earlier], timeout=left, return_when=FIRST_COMPLETED)
                for fut in finished:
                    if fut in earlier:
                        inflight[earlier.pop(fut)] -= 1
                        continue
                    r = done[fut] = futures.pop(fut)
                    inflight[str(r["node"])] -= 1
                fill()
        finally:
            # requests still in flight end within their own timeout; nobody waits for them
            pool.shutdown(wait=False, cancel_futures=True)
        late: dict[str, int] = {node: len(q) + sum(str(r["node"]) == node for r in futures.values())
                                for node, q in queues.items()}
        held: dict[str, int] = defaultdict(int)  # earlier reads still running: said with their node
        for fut, node in earlier.items():
            held[node] += not fut.done()
        self._earlier = {**earlier, **{f: str(r["node"]) for f, r in futures.items() if not f.cancelled()}}
        self._turns.finished(order, {_vm_key(r) for r in done.values()}, [])
        failed: dict[str, list[str]] = {}  # node -> reasons, one error line per node
        for fut, r in done.items():
            exc = fut.exception()
            if exc is not None:
                err = _convert(exc, f"{r['node']}/{r['vmid']}")
                failed.setdefault(str(r["node"]), []).append(err.reason)
                log.warning("adapter %s: %s", self.name, err.diagnostic)
                continue
            obs, err_text = fut.result()
            if obs is not None:
                observations.append(obs)
            if err_text:
                errors.append(err_text)
        for node, reasons in sorted(failed.items()):
            errors.append(f"node {node}: {len(reasons)} VM config(s) unread: {reasons[0]}")
        for node, n in sorted(late.items()):
            if n:
                why = (f" ({held[node]} read(s) of earlier polls still waiting for the node)"
                       if held.get(node) else "")
                errors.append(f"node {node}: {n} VM config(s) unread within the "
                              f"{self.config.timeout:g}s timeout{why}")

    def _read_vm(self, api: Any, r: dict[str, Any]) -> tuple[Observation | None, str | None]:
        node, vmid = str(r["node"]), str(r["vmid"])
        vm = f"{node}/{vmid}"
        qemu = api.nodes(node).qemu(vmid)
        try:
            cfg = qemu.config.get()
        except Exception as exc:
            raise _convert(exc, f"{vm} config") from exc
        if not isinstance(cfg, dict) or _malformed(cfg):
            raise AdapterError("malformed config response", f"{vm} config: malformed response")
        if cfg.get("template"):
            return None, None
        found = recognise(parse_notes(str(cfg.get("description") or "")), vm, self.problems)
        if found is None:
            return None, None
        instance, capacity = found
        state, err = self._state(qemu, vm, r, cfg)
        return Observation(instance=instance, vm=vm, host=node, state=state, capacity=capacity), err

    def _state(self, qemu: Any, vm: str, r: dict[str, Any], cfg: dict[str, Any]) -> tuple[str, str | None]:
        status = r.get("status")
        if status == "stopped":
            # hibernated (suspend to disk): stopped with a saved vmstate and the "suspended" lock
            return ("suspended" if r.get("lock") == "suspended" or cfg.get("vmstate") else "stopped"), None
        if status != "running":
            return "unknown", None
        # cluster/resources says "running" also for paused guests: ask QEMU (qmpstatus)
        try:
            cur = qemu.status.current.get()
        except Exception as exc:
            err = _convert(exc, f"{vm} status")
            log.warning("adapter %s: %s", self.name, err.diagnostic)
            return "running", f"{vm}: status unread ({err.reason})"
        if not isinstance(cur, dict) or _malformed(cur):
            return "running", None
        if cur.get("status") != "running":
            # cluster/resources lags (pvestatd refreshes it every ~10 s): just after a stop it
            # still says running, and the VM itself says stopped, with no qmpstatus
            return ("stopped" if cur.get("status") == "stopped" else "unknown"), None
        qmp = cur.get("qmpstatus")
        if qmp is None:
            return "running", None
        mapped = QMP_STATES.get(str(qmp))
        if mapped is None:
            self.problems.warn(vm, f"qmpstatus {qmp!r} not mapped; state unknown")
            return "unknown", None
        return mapped, None

    def close(self) -> None:
        api, self._api = self._api, None
        session = getattr(api, "_store", {}).get("session") if api is not None else None
        if session is not None:
            session.close()


def _summary(errors: list[str]) -> str | None:
    if not errors:
        return None
    text = "; ".join(errors[:5]) + (f"; and {len(errors) - 5} more" if len(errors) > 5 else "")
    return text[:500]


def _vm_key(r: dict[str, Any]) -> str:
    return f"{r['node']}/{r['vmid']}"


ADAPTER = ProxmoxAdapter
