"""Ingest cost through one day: CPU per heartbeat in each sixth of the day against the first sixth,
on SQLite and PostgreSQL (ratios of one run; never asserts a time).

Many agents polling every minute, their heartbeats interleaved in batches of 500 as they reach a
collector together: every batch touches the hour aggregates of every instance. The work of a
heartbeat should not grow with how much of the day (or of the log) is already stored. It did
while declared capacities were kept a row per day (before migration 0006): each batch rewrote
rows that grew to 1,440 offsets by midnight. Goal: the last sixth within 1.25x of the first.
Then the log's root at the day's size, from the stored 256-leaf tiles against every leaf hash.

In process (no HTTP: bench_ingest.py measures that); the collector's CPU is this process's, and
on PostgreSQL the server's own CPU is added (same cores). Usage:
    .venv/bin/python bench/bench_ingest_day.py [--agents 40] [--backends sqlite,postgresql]
"""

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import sqlalchemy as sa
from _ingestload import BATCH, OBS, cpu_seconds, make_heartbeats

from collector import credentials, db, highwater, tiles, tlog
from collector import schema as s
from collector.gctune import tune_gc
from collector.ingest import ingest_lines
from collector.pgtemp import PgCluster, new_database
from collector.settings import Settings
from protocol.merkle import root_hash

DAY = 86400
PARTS = 6


def interleaved(n_agents: int) -> tuple[list, list[str]]:
    """A day of heartbeats, one a minute from midnight, of every agent, in time order."""
    now = int(time.time())
    t0 = now - now % DAY - 10 * DAY - 60  # the first heartbeat (seq 1) at midnight
    keys, lines = make_heartbeats(n_agents * 1440, n_agents, t0=t0)
    return keys, [lines[a * 1440 + m] for m in range(1440) for a in range(n_agents)]


def run(
    name: str, url: str, tmp: Path, keys: list, lines: list[str], db_pid: int | None
) -> list[tuple[float, float]]:
    """(collector, database server) CPU seconds per heartbeat in each sixth of the day."""
    st = Settings(tmp / f"data-{name}", url, "bench")
    engine = st.open()
    for i, k in enumerate(keys):
        db.write_tx(engine, lambda c, k=k, i=i: credentials.add_agent(c, "acme", f"a{i}", k.public_b64, 0))
    per = len(lines) // PARTS
    out = []
    for p in range(PARTS):
        part = lines[p * per : (p + 1) * per]
        c0, s0 = time.process_time(), None if db_pid is None else cpu_seconds(db_pid)
        for i in range(0, len(part), BATCH):
            results = ingest_lines(engine, part[i : i + BATCH])
            assert all(r["status"] == "accepted" for r in results), results[:3]
        cpu = time.process_time() - c0
        server = 0.0 if s0 is None else (cpu_seconds(db_pid) or s0) - s0  # type: ignore[arg-type]
        out.append((cpu / len(part), server / len(part)))
    with db.read_conn(engine) as c:
        month, size = c.execute(sa.select(s.logs.c.month, s.logs.c.size)).one()
        t = time.perf_counter()
        plain = root_hash(tiles.leaf_hashes(c, "acme", month, 0, size))
        every = time.perf_counter() - t
        t = time.perf_counter()
        tiled = tlog.tree(c, "acme", month, size).root()
        tiled_s = time.perf_counter() - t
    assert plain == tiled
    print(f"{name}: the log's root at {size:,} leaves: {every * 1e3:,.1f} ms from every leaf hash, "
          f"{tiled_s * 1e3:,.1f} ms from the stored tiles ({every / tiled_s:,.0f}x)")
    # The marks written now, while the data directory exists: at exit it is gone (a warning).
    highwater.observe(engine)
    engine.dispose()
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--agents", type=int, default=40)
    ap.add_argument("--backends", default="sqlite,postgresql", help="which of sqlite,postgresql to run")
    args = ap.parse_args()
    tune_gc()
    backends = args.backends.split(",")
    keys, lines = interleaved(args.agents)
    print(f"{args.agents} agents x {OBS} instances, a heartbeat a minute for a day: {len(lines):,} "
          f"heartbeats in batches of {BATCH}, agents interleaved")
    with tempfile.TemporaryDirectory(prefix="tr7-bench-day-") as d, contextlib.ExitStack() as stack:
        tmp = Path(d)
        for name in (b for b in ("sqlite", "postgresql") if b in backends):
            if name == "sqlite":
                url, pid = f"sqlite:///{tmp / 'day.db'}", None
            else:
                cluster = PgCluster(durable=True)
                stack.callback(cluster.stop)
                url = new_database(cluster.admin_url)
                pid = int((cluster.dir / "data" / "postmaster.pid").read_text().split()[0])
            split = run(name, url, tmp, keys, lines, pid)
            costs = [c + d for c, d in split]
            who = "collector + PostgreSQL server" if pid else "collector"
            print(f"{name}: {who} CPU per heartbeat by sixth of the day (us): "
                  + " ".join(f"{c * 1e6:,.0f}" for c in costs))
            if pid:
                print(f"{name}: of which the server's: " + " ".join(f"{d * 1e6:,.0f}" for _, d in split))
            print(f"{name}: last sixth / first sixth = {costs[-1] / costs[0]:.2f} (goal <= 1.25)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
