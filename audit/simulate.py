"""A deterministic simulated month of one provider: keys, signed chains, catalog, collector log."""

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit.bundle import ClosedState, write_bundle
from audit.recompute import bill_lines, sign_log_checkpoint
from protocol.heartbeat import ZERO_HASH, sign_heartbeat, token_digest
from protocol.keys import AgentKey
from protocol.note import NoteSigner
from protocol.timefmt import format_time, month_bounds, previous_month

HOUR = 3600
DAY = 86400
PROVIDER = "acme"
COLLECTOR_NAME = "collector.acme.example"

# state(t) -> "running"/"stopped"/... or None when the instance is not seen at all at t.
StateFn = Callable[[int], str | None]


@dataclass
class SimInstance:
    instance: str
    adapter: str
    vm: str
    host: str
    state: StateFn
    capacity: Callable[[int], dict[str, Any] | None] = lambda t: None


@dataclass
class SimAgent:
    name: str
    key: AgentKey
    enrolled_at: int
    adapters: dict[str, str]  # adapter name -> platform
    instances: list[SimInstance]
    first_seq: int = 1  # seq of its first heartbeat of the month
    offset: int = 0  # seconds after the interval tick at which it polls
    revoked_at: int | None = None

    def agents_json(self) -> dict[str, Any]:
        return {
            "kid": self.key.kid, "public_key": self.key.public_b64, "name": self.name,
            "enrolled_at": format_time(self.enrolled_at),
            "revoked_at": None if self.revoked_at is None else format_time(self.revoked_at),
        }


@dataclass
class Scenario:
    """Everything a collector would hold for one (provider, month), plus what the tests expect."""

    month: str
    provider: str
    agents: list[SimAgent]
    leaves: list[str]  # the log in acceptance order
    anchors: list[str]
    catalog: dict[str, Any]
    collector_key: Ed25519PrivateKey
    interval: int = 600
    collector_name: str = COLLECTOR_NAME
    expected: dict[str, Any] = field(default_factory=dict)  # gap/fork seqs per agent name

    @property
    def origin(self) -> str:
        return f"{self.collector_name}/{self.provider}/{self.month}"

    @property
    def signer(self) -> NoteSigner:
        """The collector's checkpoint signer (deterministic: Ed25519 signatures are)."""
        return NoteSigner(self.collector_name, self.collector_key)

    def agent(self, name: str) -> SimAgent:
        return next(a for a in self.agents if a.name == name)


def _key(seed: int, label: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(f"{seed}/{label}".encode()).digest())


def _between(t: int, lo: int, hi: int) -> bool:
    return lo <= t < hi


def _catalog(m0: int, month: str, gaps: dict[str, Any]) -> dict[str, Any]:
    ts = format_time
    before = month_bounds(previous_month(month))[0]
    return {
        "provider": {"id": PROVIDER, "name": "Acme MSP", "currency": "EUR"},
        "policy": {"gaps": gaps},
        "bundles": ["basic", "pro", "enterprise"],
        "platform_licenses": [{"id": "PL-1", "valid_from": "2026-01-01T00:00:00Z", "valid_to": None}],
        "customers": [
            {"id": "c1", "name": "Alpine Logistics AG", "downgraded": []},
            {"id": "c2", "name": "Baltic Retail OU", "downgraded": []},
            {"id": "c3", "name": "Coastal Clinics Ltd",
             "downgraded": [[ts(m0 + 19 * DAY + 6 * HOUR + 1800), ts(m0 + 22 * DAY)]]},
        ],
        "licenses": [
            # PAYG hourly with a capacity upgrade mid-month (mid-hour: that hour takes the higher price).
            {"id": "SL-A01", "customer": "c1", "instance": "TR7-A01", "model": "payg", "unit": "hour",
             "start": ts(before), "end": None,
             "capacity": [
                 {"from": ts(before), "bundle": "pro", "bandwidth_mbps": 500, "vservices": 10},
                 {"from": ts(m0 + 14 * DAY + 12 * HOUR + 1800), "bundle": "enterprise",
                  "bandwidth_mbps": 1000, "vservices": 25}]},
            # Fixed term ends on the 10th; PAYG takes the same instance over from then.
            {"id": "SL-A02F", "customer": "c1", "instance": "TR7-A02", "model": "fixed", "unit": "hour",
             "start": ts(before), "end": ts(m0 + 9 * DAY),
             "capacity": [{"from": ts(before), "bundle": "basic", "bandwidth_mbps": 100, "vservices": 5}]},
            {"id": "SL-A02P", "customer": "c1", "instance": "TR7-A02", "model": "payg", "unit": "hour",
             "start": ts(m0 + 9 * DAY), "end": None,
             "capacity": [{"from": ts(m0 + 9 * DAY), "bundle": "pro", "bandwidth_mbps": 200,
                           "vservices": 10}]},
            {"id": "SL-B01", "customer": "c2", "instance": "TR7-B01", "model": "payg", "unit": "device_day",
             "pack": "professional", "day_counts": "assigned", "start": ts(m0 + 2 * DAY), "end": None,
             "capacity": []},
            {"id": "SL-B02", "customer": "c2", "instance": "TR7-B02", "model": "payg", "unit": "device_day",
             "pack": "professional", "day_counts": "active", "start": ts(before), "end": None,
             "capacity": []},
            {"id": "SL-C01", "customer": "c3", "instance": "TR7-C01", "model": "payg", "unit": "hour",
             "start": ts(before), "end": None,
             "capacity": [{"from": ts(before), "bundle": "basic", "bandwidth_mbps": 200, "vservices": 5}]},
        ],
        "rates": {
            "hourly": [
                {"bundle": "basic", "max_bandwidth_mbps": 200, "price": "0.0150"},
                {"bundle": "pro", "max_bandwidth_mbps": 200, "price": "0.0300"},
                {"bundle": "pro", "max_bandwidth_mbps": 1000, "price": "0.0450"},
                {"bundle": "enterprise", "max_bandwidth_mbps": 1000, "price": "0.0900"},
            ],
            "monthly": [{"pack": "professional", "price": "12.00"}],
        },
    }


def _agents(seed: int, m0: int) -> list[SimAgent]:
    def weekend_nights(t: int) -> str | None:
        # TR7-A02 is shut down at night on weekends (inactive hours), and vanishes on the 27th.
        if _between(t, m0 + 26 * DAY, m0 + 27 * DAY):
            return None
        wd = (t // DAY + 3) % 7  # 1970-01-01 was a Thursday; 5, 6 = Saturday, Sunday
        h = (t % DAY) // HOUR
        return "stopped" if wd in (5, 6) and (h >= 22 or h < 6) else "running"

    def a02_capacity(t: int) -> dict[str, Any]:
        # Over-use of the fixed-term license on the 5th: it declares pro while licensed basic.
        if _between(t, m0 + 4 * DAY + 9 * HOUR, m0 + 4 * DAY + 11 * HOUR):
            return {"bundle": "pro", "bandwidth_mbps": 100, "vservices": 5}
        return {"bundle": "basic", "bandwidth_mbps": 100}

    def b02_state(t: int) -> str | None:
        if _between(t, m0 + 12 * DAY, m0 + 24 * DAY):
            return None
        return "running" if (t % DAY) // HOUR in range(7, 19) else "stopped"

    def x99_state(t: int) -> str | None:
        return "running" if _between(t, m0 + 6 * DAY + 9 * HOUR, m0 + 7 * DAY + 17 * HOUR) else None

    dc1 = SimAgent(
        "dc1-agent", AgentKey(_key(seed, "dc1")), m0 - 60 * DAY, {"dc1-vcenter": "vmware"},
        [SimInstance("TR7-A01", "dc1-vcenter", "4210a6e2-7c1d-4f3e-9a55-0b1c2d3e4f01", "esx01",
                     lambda t: "running", lambda t: {"bundle": "pro", "bandwidth_mbps": 500}),
         SimInstance("TR7-A02", "dc1-vcenter", "4210a6e2-7c1d-4f3e-9a55-0b1c2d3e4f02", "esx02",
                     weekend_nights, a02_capacity)],
        first_seq=8641, offset=3,
    )
    lab = SimAgent(
        "lab-agent", AgentKey(_key(seed, "lab")), m0 - 40 * DAY, {"kvm-lab": "kvm", "pve": "proxmox"},
        [SimInstance("TR7-B01", "kvm-lab", "5c3e2a10-1111-4c2b-8d7e-000000000b01", "kvm1",
                     lambda t: "running"),
         SimInstance("TR7-B02", "pve", "pve1/104", "pve1", b02_state)],
        first_seq=5761, offset=11,
    )
    cloud = SimAgent(
        "cloud-agent", AgentKey(_key(seed, "cloud")), m0 + DAY + 9 * HOUR, {"aws-eu": "aws"},
        [SimInstance("TR7-C01", "aws-eu", "i-0c01c01c01c01c01c", "eu-central-1", lambda t: "running"),
         SimInstance("TR7-X99", "aws-eu", "i-0x99x99x99x99x99x", "eu-central-1", x99_state)],
        first_seq=1, offset=29,
    )
    return [dc1, lab, cloud]


def _extra_agents(seed: int, m0: int, n: int) -> list[SimAgent]:
    return [SimAgent(f"extra-{a:02d}", AgentKey(_key(seed, f"extra-{a}")), m0 - 30 * DAY, {"kvm": "kvm"},
                     [SimInstance(f"TR7-E{a:02d}{j}", "kvm", f"e{a:02d}{j}-vm", f"node{a}",
                                  lambda t: "running") for j in range(3)], offset=(5 + a) % 50)
            for a in range(n)]


def _payload(agent: SimAgent, seq: int, prev: str, t: int, interval: int, failed: set[str]) -> dict[str, Any]:
    polls = [{"adapter": n, "platform": p, "ok": n not in failed, "error": "timeout" if n in failed else None}
             for n, p in sorted(agent.adapters.items())]
    obs = []
    for inst in agent.instances:
        state = inst.state(t)
        if state is None or inst.adapter in failed:
            continue
        obs.append({"instance": inst.instance, "adapter": inst.adapter, "vm": inst.vm, "host": inst.host,
                    "state": state, "capacity": inst.capacity(t)})
    return {"v": 1, "agent": agent.key.kid, "seq": seq, "prev": prev, "time": format_time(t),
            "interval": interval, "polls": polls, "observations": obs}


def build_scenario(
    month: str = "2026-10", seed: int = 7, interval: int = 600, days: int | None = None,
    gaps: dict[str, Any] | None = None, extra_agents: int = 0,
) -> Scenario:
    """Build the month; ``days`` limits heartbeats to the first days (the catalog stays whole).

    ``extra_agents`` adds plain agents (three running PAYG instances each, customer c4) to scale
    the log up for benchmarks, e.g. 7 extra agents at a 60 s interval give about 450,000 lines.
    """
    m0, m1 = month_bounds(month)
    end = m1 if days is None else min(m1, m0 + days * DAY)
    rng = random.Random(seed)
    agents = _agents(seed, m0) + _extra_agents(seed, m0, extra_agents)
    lab, cloud = agents[1], agents[2]
    gap_window = (m0 + 13 * DAY + 10 * HOUR, m0 + 13 * DAY + 12 * HOUR)  # cloud-agent uplink down
    fork_at = m0 + 21 * DAY + 8 * HOUR  # lab-agent host restored from a snapshot
    fail_window = (m0 + 17 * DAY + 2 * HOUR, m0 + 17 * DAY + 4 * HOUR)  # kvm-lab poll times out
    timed: list[tuple[int, int, str]] = []  # (time, agent index, token)
    late: list[str] = []
    anchors: list[str] = []
    expected: dict[str, Any] = {"gaps": {}, "forks": {}}
    for ai, agent in enumerate(agents):
        seq, prev = agent.first_seq, ZERO_HASH
        if seq > 1:
            # The anchor: last heartbeat of the month before, itself chained to an earlier one.
            anchor_payload = _payload(agent, seq - 1, hashlib.sha256(f"{seed}{ai}".encode()).hexdigest(),
                                      m0 - interval + agent.offset, interval, set())
            anchor = sign_heartbeat(agent.key, anchor_payload)
            anchors.append(anchor)
            prev = token_digest(anchor)
        start = max(m0, agent.enrolled_at)
        t0 = start - start % interval + (interval if start % interval else 0)
        dropped: list[int] = []
        for tick in range(t0, end, interval):
            t = tick + agent.offset + rng.randrange(0, 5)
            if t >= end:
                break
            failed = {"kvm-lab"} if agent is lab and _between(t, *fail_window) else set()
            token = sign_heartbeat(agent.key, _payload(agent, seq, prev, t, interval, failed))
            if agent is cloud and _between(t, *gap_window):
                dropped.append(seq)  # signed, never delivered
            else:
                timed.append((t, ai, token))
            if agent is lab and tick <= fork_at < tick + interval:
                # The restored host re-signs the same seq with what it sees then: a fork.
                other = _payload(agent, seq, prev, t + 41, interval, {"kvm-lab"})
                late.append(sign_heartbeat(agent.key, other))
                expected["forks"][agent.name] = [seq]
            seq, prev = seq + 1, token_digest(token)
        if dropped:
            expected["gaps"][agent.name] = [[dropped[0], dropped[-1]]]
    timed.sort(key=lambda x: (x[0], x[1]))
    leaves = [tok for _, _, tok in timed] + late  # the fork's copy arrives late, at the end
    catalog = _catalog(m0, month, gaps or {"mode": "evidence"})
    if extra_agents:
        catalog["customers"].append({"id": "c4", "name": "Delta Hosting SE", "downgraded": []})
        catalog["licenses"] += [
            {"id": f"SL-{i.instance}", "customer": "c4", "instance": i.instance, "model": "payg",
             "unit": "hour", "start": format_time(m0), "end": None,
             "capacity": [{"from": format_time(m0), "bundle": "pro", "bandwidth_mbps": 1000,
                           "vservices": 10}]}
            for a in agents[3:] for i in a.instances]
    return Scenario(
        month=month, provider=PROVIDER, agents=agents, leaves=leaves, anchors=anchors,
        catalog=catalog,
        collector_key=_key(seed, "collector"), interval=interval, expected=expected,
    )


def make_bundle(scenario: Scenario, out_dir: Path, close_at_size: int | None = None,
                overwrite: bool = False) -> Path:
    """Bill the scenario, sign its checkpoint(s) and write the audit bundle (closed/ when asked)."""
    signer = scenario.signer
    usage, invoice = bill_lines(scenario.leaves, scenario.anchors, scenario.catalog, scenario.month)
    closed = None
    if close_at_size is not None:
        prefix = scenario.leaves[:close_at_size]
        c_usage, c_invoice = bill_lines(prefix, scenario.anchors, scenario.catalog, scenario.month)
        closed = ClosedState(sign_log_checkpoint(signer, scenario.origin, prefix), c_usage, c_invoice)
    m1 = month_bounds(scenario.month)[1]
    return write_bundle(
        Path(out_dir), provider=scenario.provider, month=scenario.month, leaves=scenario.leaves,
        anchors=scenario.anchors, checkpoint=sign_log_checkpoint(signer, scenario.origin, scenario.leaves),
        collector_vkey=signer.verifier_key(), agents=[a.agents_json() for a in scenario.agents],
        catalog=scenario.catalog, usage=usage, invoice=invoice, closed=closed,
        created=format_time(m1 + DAY + 2 * HOUR), overwrite=overwrite,
    )

