"""Helpers for billing tests: signed heartbeats from real agent keys and small catalogs."""

from copy import deepcopy
from types import SimpleNamespace
from typing import Any

import pytest

from protocol.heartbeat import Heartbeat, parse_unverified, sign_heartbeat, token_digest
from protocol.keys import AgentKey
from protocol.timefmt import format_time, parse_time

MONTH = "2026-11"


def T(text: str) -> int:
    """Epoch seconds of a wire time; a bare `DD HH:MM` is read as a day of November 2026."""
    if "T" not in text:
        day, hm = text.split()
        text = f"2026-11-{int(day):02d}T{hm}:00Z"
    return parse_time(text)


class Agent:
    """A real signer: consecutive seqs, each `prev` the hash of the previous compact JWS."""

    def __init__(self) -> None:
        self.key = AgentKey.generate()
        self.seq = 0
        self.prev = "0" * 64

    @property
    def kid(self) -> str:
        return self.key.kid

    def beat(self, when: str | int, *observations: dict[str, Any], seq: int | None = None,
             prev: str | None = None) -> Heartbeat:
        self.seq = seq if seq is not None else self.seq + 1
        t = when if isinstance(when, int) else T(when)
        payload = {"v": 1, "agent": self.kid, "seq": self.seq,
                   "prev": prev if prev is not None else self.prev, "time": format_time(t), "interval": 300,
                   "polls": [{"adapter": "a1", "platform": "kvm", "ok": True, "error": None}],
                   "observations": list(observations)}
        token = sign_heartbeat(self.key, payload)
        self.prev = token_digest(token)
        return parse_unverified(token)


def obs(instance: str, state: str = "running", capacity: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"instance": instance, "adapter": "a1", "vm": f"vm-{instance}", "host": None, "state": state,
            "capacity": capacity}


def cap(start: str, bundle: str | None = "pro", bw: int | None = 500, vs: int | None = 10) -> dict[str, Any]:
    entry: dict[str, Any] = {"from": start if "T" in start else format_time(T(start))}
    for name, value in (("bundle", bundle), ("bandwidth_mbps", bw), ("vservices", vs)):
        if value is not None:
            entry[name] = value
    return entry


def lic(id: str, instance: str, model: str = "payg", unit: str = "hour", start: str = "2026-11-01T00:00:00Z",
        end: str | None = None, capacity: list[dict[str, Any]] | None = None, customer: str = "c1",
        **extra: Any) -> dict[str, Any]:
    def to_wire(s: str | None) -> str | None:
        return s if s is None or "T" in s else format_time(T(s))

    out = {"id": id, "customer": customer, "instance": instance, "model": model, "unit": unit,
           "start": to_wire(start), "end": to_wire(end),
           "capacity": capacity if capacity is not None else [cap("2026-10-01T00:00:00Z")]}
    out.update(extra)
    return out


BASE: dict[str, Any] = {
    "provider": {"id": "acme", "name": "Acme MSP", "currency": "EUR"},
    "policy": {"gaps": {"mode": "evidence"}},
    "bundles": ["basic", "pro", "enterprise"],
    "platform_licenses": [{"id": "PL-1", "valid_from": "2026-01-01T00:00:00Z", "valid_to": None}],
    "customers": [{"id": "c1", "name": "Example GmbH", "downgraded": []},
                  {"id": "c2", "name": "Other AG"}],
    "licenses": [],
    "rates": {"hourly": [{"bundle": "basic", "max_bandwidth_mbps": 100, "price": "0.0100"},
                         {"bundle": "basic", "max_bandwidth_mbps": 1000, "price": "0.0200"},
                         {"bundle": "pro", "max_bandwidth_mbps": 1000, "price": "0.0450"},
                         {"bundle": "pro", "max_bandwidth_mbps": 10000, "price": "0.0900"},
                         {"bundle": "enterprise", "max_bandwidth_mbps": 10000, "price": "0.1000"}],
              "monthly": [{"pack": "professional", "price": "12.00"}]},
}


def catalog(*licenses: dict[str, Any], bridge: int | None = None, **top: Any) -> dict[str, Any]:
    out = deepcopy(BASE)
    out["licenses"] = list(licenses)
    if bridge is not None:
        out["policy"] = {"gaps": {"mode": "bridge", "max_hours": bridge}}
    out.update(top)
    return out


def hourly(agent: Agent, instance: str, first: str, hours: int, state: str = "running",
           capacity: dict[str, Any] | None = None) -> list[Heartbeat]:
    """One heartbeat at HH:10 of each of `hours` consecutive hours from `first`."""
    t0 = T(first) + 600
    return [agent.beat(t0 + k * 3600, obs(instance, state, capacity)) for k in range(hours)]


def row(usage: dict[str, Any], license_id: str) -> dict[str, Any]:
    return next(r for r in usage["rows"] if r["license"] == license_id)


@pytest.fixture
def kit() -> SimpleNamespace:
    return SimpleNamespace(T=T, Agent=Agent, obs=obs, cap=cap, lic=lic, catalog=catalog, hourly=hourly,
                           row=row, MONTH=MONTH)


@pytest.fixture(scope="session")
def pool() -> tuple[list[Heartbeat], list[str], dict[str, Any]]:
    """A small month with every rule in play, a fork and a break: (heartbeats, their tokens, catalog)."""
    a, b = Agent(), Agent()
    beats: list[Heartbeat] = []
    for k in range(16):
        t = T("2 06:10") + k * 2700  # every 45 min: some hours twice, none skipped
        state = "stopped" if k in (5, 6) else "running"
        if k not in (9, 10, 11):  # a's hours around k=10 are unknown: bridged under max_hours 3
            beats.append(a.beat(t, obs("P", state, {"bundle": "pro", "bandwidth_mbps": 500}),
                                obs("F", "running", {"bundle": "pro" if k == 12 else "basic"}), obs("U")))
        beats.append(b.beat(t + 300, obs("D"), *([obs("P", "paused")] if k % 4 == 0 else [])))
    twin = Agent()
    twin.key = a.key
    beats.append(b.beat(T("3 01:30"), obs("G", "running", {"bundle": "basic"})))
    # A fork; its over-use of G's fixed term must not count, as nothing of a quarantined heartbeat.
    beats.append(twin.beat(T("3 01:10"), obs("P"), obs("U"), obs("G", "running", {"bundle": "enterprise"}),
                           seq=4, prev=beats[5].digest))
    beats.append(b.beat(T("3 02:10"), obs("D"), prev="ef" * 32))  # a break
    cat = catalog(lic("SL-P", "P", capacity=[cap("2026-10-01T00:00:00Z", "basic", 100, 5), cap("2 12:30")]),
                  lic("SL-F", "F", "fixed", capacity=[cap("2026-10-01T00:00:00Z", "basic", 100, 5)]),
                  lic("SL-G", "G", "fixed", capacity=[cap("2026-10-01T00:00:00Z", "basic", 100, 5)]),
                  lic("SL-D", "D", unit="device_day", capacity=[], pack="professional", day_counts="active"),
                  bridge=3)
    return beats, [hb.token for hb in beats], cat
