"""The ingest benchmarks' load and yardsticks: signed heartbeats, the raw Ed25519 rate on 1 and N
cores, the strict verifier's rate, a process tree's CPU, the ratio a run's costs allow."""

import base64
import contextlib
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

from protocol.heartbeat import ZERO_HASH, sign_heartbeat, token_digest, verify_heartbeat
from protocol.keys import AgentKey
from protocol.timefmt import format_time

OBS = 50
BATCH = 500


def make_heartbeats(
    n: int, n_agents: int, keys: list[AgentKey] | None = None, varying: bool = False,
    t0: int | None = None,
) -> tuple[list[AgentKey], list[str]]:
    """``per`` heartbeats of each agent, one a minute. Steady (the default): the same instances in
    the same states poll after poll, as real agents send, so consecutive ``observations`` arrays
    are byte-identical; ``varying``: every observation's host changes with seq (no two arrays
    alike, so no memo of them can hit; the hour cells are the same)."""
    keys = keys or [AgentKey.generate() for _ in range(n_agents)]
    t0 = int(time.time()) - 20 * 86400 if t0 is None else t0  # seq 1 is at t0 + 60
    lines = []
    per = n // n_agents
    for a, key in enumerate(keys):
        prev = ZERO_HASH
        for seq in range(1, per + 1):
            obs = [
                {
                    "instance": f"TR7-{a:02d}-{j:02d}",
                    "adapter": "a",
                    "vm": f"vm-{a}-{j}",
                    "host": f"esx{seq}" if varying else "esx1",
                    "state": "running",
                    "capacity": {"bundle": "pro", "bandwidth_mbps": 500, "vservices": 10},
                }
                for j in range(OBS)
            ]
            payload = {
                "v": 1,
                "agent": key.kid,
                "seq": seq,
                "prev": prev,
                "time": format_time(t0 + seq * 60),
                "interval": 60,
                "polls": [{"adapter": "a", "platform": "vmware", "ok": True, "error": None}],
                "observations": obs,
            }
            tok = sign_heartbeat(key, payload)
            prev = token_digest(tok)
            lines.append(tok)
    return keys, lines


# Each raw-rate process checks at least this many signatures (repeating its share of the lines),
# so that about a second of work is timed rather than the start-up of a process.
RAW_CHECKS = 12_000


def _prepared(
    keys: list[AgentKey], lines: list[str], part: int = 0, parts: int = 1
) -> list[tuple[Any, bytes, bytes]]:
    """(public key, signature, signing input) of every parts-th line from part: the raw loop's input."""
    by_kid = {k.kid: k.public for k in keys}
    per = len(lines) // len(keys)
    out = []
    for i in range(part, len(lines), parts):
        h, p, s = lines[i].split(".")
        out.append((by_kid[keys[i // per].kid], base64.urlsafe_b64decode(s + "=="), f"{h}.{p}".encode()))
    return out


def _raw_checks(items: list[tuple[Any, bytes, bytes]], reps: int) -> int:
    """Ed25519 signature checks alone (no parsing, no decoding, no storage), reps times over items."""
    for _ in range(reps):
        for public, sig, msg in items:
            public.verify(sig, msg)
    return reps * len(items)


def _reps(share: int) -> int:
    return max(1, -(-RAW_CHECKS // max(share, 1)))


def raw_verify_rate(keys: list[AgentKey], lines: list[str]) -> float:
    """Raw checks per second on one core; only the verify loop is timed."""
    items = _prepared(keys, lines)
    t = time.perf_counter()
    n = _raw_checks(items, _reps(len(items)))
    return n / (time.perf_counter() - t)


_SHARED: tuple[list[AgentKey], list[str]] = ([], [])  # inherited by the forked raw-rate processes


def _raw_part(part: int, parts: int, barrier: Any, out: Any) -> None:
    # Prepared before the clock (split, base64-decoded, encoded, and every shared string touched,
    # so its copy-on-write faults are paid here); then all processes start their loops together.
    items = _prepared(*_SHARED, part, parts)
    barrier.wait()
    t0 = time.perf_counter()
    n = _raw_checks(items, _reps(len(items)))
    out.put((n, t0, time.perf_counter()))


def raw_verify_rate_cores(keys: list[AgentKey], lines: list[str], procs: int) -> float:
    """Raw checks per second with ``procs`` processes, wall clock from the first loop's start to the
    last one's end (perf_counter is the system's monotonic clock, the same in every process)."""
    global _SHARED
    _SHARED = (keys, lines)
    ctx = multiprocessing.get_context("fork")
    barrier, out = ctx.Barrier(procs), ctx.Queue()
    children = [ctx.Process(target=_raw_part, args=(i, procs, barrier, out)) for i in range(procs)]
    for c in children:
        c.start()
    got = [out.get() for _ in children]
    for c in children:
        c.join()
    return sum(n for n, _, _ in got) / (max(t1 for _, _, t1 in got) - min(t0 for _, t0, _ in got))


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU of a process and its children (Linux /proc), None where unavailable:
    those running, and those that ended and were waited for (PostgreSQL's autovacuum workers
    come and go within a run; counting only the running ones missed some of their work and
    counted work done before the clock)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        total = 0.0
        for p in [pid, *map(int, children)]:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            # utime, stime, then cutime, cstime: the waited-for children's (stat(5), fields 14-17)
            total += sum(map(int, fields[11:15])) / os.sysconf("SC_CLK_TCK")
        return total
    except (OSError, ValueError, IndexError):
        return None


def pin_tree(pid: int, cpus: set[int]) -> None:
    """Run a process and its running children on ``cpus`` (children it makes later inherit it)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    for p in [pid, *map(int, children)]:
        with contextlib.suppress(ProcessLookupError):  # ended meanwhile
            os.sched_setaffinity(p, cpus)


def strict_verify_rate(keys: list[AgentKey], lines: list[str]) -> float:
    """protocol.verify_heartbeat: strict parse, schema and signature (the floor of ingest's CPU)."""
    by_kid = {k.kid: k.public for k in keys}
    t = time.perf_counter()
    for line in lines:
        verify_heartbeat(line, by_kid)
    return len(lines) / (time.perf_counter() - t)


def ceiling(rate: float, base: float, n_cores: int, costs: list[float | None]) -> str:
    """How busy a run kept its cores, and the highest ratio its costs allow: ``costs`` are the CPU
    seconds a heartbeat of every process on those cores (None: not read), so at most
    n_cores / sum(costs) heartbeats a second fit on them, whatever the scheduling. A ratio under
    the goal with the cores near 100% busy is bound by the costs, not by idle time."""
    if any(c is None for c in costs):
        return ""
    per = sum(c for c in costs if c is not None)
    return (f"; its {n_cores} core{'s' if n_cores > 1 else ''} {rate * per / n_cores:.0%} busy with the "
            f"costs above, which allow at most {n_cores / per / base:.2f} of raw")
