"""Ingest's hour aggregates when observations are decoded once per distinct text and ORed once per
hour: the `days` and `capacities` rows are those a plain per-heartbeat, per-observation pass gives."""

import json
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import sqlalchemy as sa

from collector import schema as s
from collector.ingest import ingest_lines
from protocol.heartbeat import ZERO_HASH, sign_heartbeat, token_digest
from protocol.keys import AgentKey
from protocol.sharedpayload import clear_memo
from protocol.timefmt import format_time

H, DAY = 3600, 86400


class _Signer:
    def __init__(self) -> None:
        self.key, self.seq, self.prev = AgentKey.generate(), 1, ZERO_HASH

    def beat(self, t: int, obs: list[dict[str, Any]]) -> str:
        payload = {
            "v": 1, "agent": self.key.kid, "seq": self.seq, "prev": self.prev, "time": format_time(t),
            "interval": 600, "polls": [{"adapter": "a", "platform": "kvm", "ok": True, "error": None}],
            "observations": obs,
        }
        token = sign_heartbeat(self.key, payload)
        self.seq, self.prev = self.seq + 1, token_digest(token)
        return token


def _obs(inst: str, state: str = "running", host: str = "h1", cap: Any = None) -> dict[str, Any]:
    return {"instance": inst, "adapter": "a", "vm": "vm-" + inst, "host": host, "state": state,
            "capacity": cap}


Batch = list[tuple[int, list[dict[str, Any]]]]


def _expected(batches: list[Batch]) -> tuple[dict[Any, list[int]], dict[Any, str]]:
    """The plain pass: every observation of every accepted heartbeat, one at a time."""
    bits: dict[Any, list[int]] = {}
    caps: dict[Any, list[str]] = defaultdict(list)
    for batch in batches:
        offs: dict[Any, set[int]] = defaultdict(set)
        for t, obs in batch:
            day = t - t % DAY
            for o in obs:
                b = bits.setdefault((day, o["instance"], o["vm"]), [0, 0])
                b[1] |= 1 << ((t - day) // H)
                if o["state"] == "running":
                    b[0] |= 1 << ((t - day) // H)
                c = o["capacity"]
                if c is not None:
                    key = json.dumps([c.get("bundle"), c.get("bandwidth_mbps"), c.get("vservices")])
                    offs[(day, o["instance"], key, (t - day) // H)].add(t - day)
        for k, v in offs.items():
            caps[k].append(",".join(map(str, sorted(v))))
    return bits, {k: ",".join(v) for k, v in caps.items()}


def test_shared_observations_aggregate_as_the_plain_pass(settings, tools) -> None:
    clear_memo()
    a, b = _Signer(), _Signer()
    base = 20_000 * DAY + 22 * H  # two hours before a day ends
    for n, sig in enumerate((a, b)):
        tools.enrol(settings, "acme", tools.Agent(f"s{n}", sig.key), base - DAY)
    pro = {"bundle": "pro", "bandwidth_mbps": 100, "vservices": 2}
    steady = [_obs("A", cap=pro), _obs("B", "stopped"), _obs("C", cap={"bundle": "basic"})]
    batches: list[Batch] = []
    lines: list[list[str]] = []
    for k in range(3):
        batch: Batch = []
        toks: list[str] = []
        for i in range(12):  # 10 min apart: across hours and, in the last batch, a day boundary
            t = base + (k * 12 + i) * 600
            obs_a = steady  # the same text again and again
            obs_b = [  # some texts repeat, some change only a host, some change a state or capacity
                _obs("A", host=f"h{i % 3}", cap=pro),
                _obs("D", "running" if i % 4 else "paused", cap={"vservices": 2, "bundle": "pro"}),
                _obs("E", cap={"bundle": "pro", "vservices": i % 2}),
            ]
            for sig, obs in ((a, obs_a), (b, obs_b)):
                toks.append(sig.beat(t, obs))
                batch.append((t, obs))
        batches.append(batch)
        lines.append(toks)
    bad = lines[1][0][:-8] + ("A" if lines[1][0][-8] != "A" else "B") + lines[1][0][-7:]  # signature broken
    now = base + 4 * DAY
    for k, toks in enumerate(lines):
        extra = [bad, toks[0]] if k == 1 else []  # a rejected line and a duplicate, with memoised arrays
        res = ingest_lines(settings.engine, [*toks, *extra], now=now)
        statuses = [r["status"] for r in res]
        assert statuses == ["accepted"] * len(toks) + (["rejected", "duplicate"] if extra else [])
    bits, caps = _expected(batches)
    with settings.engine.connect() as c:
        got_bits = {(r.day, r.instance, r.vm): [r.active, r.seen] for r in c.execute(sa.select(s.days))}
        got_caps = {(r.day, r.instance, r.cap, r.hour): r.offsets for r in c.execute(sa.select(s.capacities))}
    assert got_bits == bits
    assert got_caps == caps
    assert len({d for d, _, _ in bits}) == 2


def test_threads_of_one_process_ingest_together(settings, tools) -> None:
    # The server runs each request's ingest in a thread pool: the shared memo and cells are used
    # by several threads of one process at once.
    signers = [_Signer() for _ in range(4)]
    base = 20_000 * DAY
    for n, sig in enumerate(signers):
        tools.enrol(settings, "acme", tools.Agent(f"t{n}", sig.key), base - DAY)
    batches = [[sig.beat(base + i * 60, [_obs(f"I{n}")]) for i in range(150)]
               for n, sig in enumerate(signers)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda b: ingest_lines(settings.engine, b, now=base + DAY), batches))
    assert all(r["status"] == "accepted" for res in results for r in res)
    with settings.engine.connect() as conn:
        rows = conn.execute(sa.select(s.days.c.instance, s.days.c.active)).all()
    assert sorted(i for i, _ in rows) == ["I0", "I1", "I2", "I3"]
    assert all(a == (1 << 3) - 1 for _, a in rows)  # 150 minutes from midnight: hours 0, 1 and 2
