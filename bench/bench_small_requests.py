"""Ingest of one-heartbeat requests (an agent posting as it polls) against batches of 500, in one run.

What is compared, in process (no HTTP: bench_ingest.py measures that), on SQLite and PostgreSQL:
the collector's CPU per heartbeat when every request holds one heartbeat, and when requests hold
500; the ratio is the price of a request's fixed work (its transactions and ~15 statements).
On PostgreSQL the server's own CPU per heartbeat is printed apart (same cores). Durable
databases, as bench_ingest.py. Never asserts a time. Usage:
    .venv/bin/python bench/bench_small_requests.py [--heartbeats 2400] [--backends sqlite,postgresql]
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _ingestload import BATCH, cpu_seconds, make_heartbeats

from collector import credentials, db
from collector.gctune import tune_gc
from collector.ingest import ingest_lines
from collector.pgtemp import PgCluster, new_database
from collector.settings import Settings


def run(url: str, data_dir: Path, keys: list, lines: list[str], per_request: int, db_pid: int | None):
    """(collector CPU s per heartbeat, the database server's or None) for requests of ``per_request``."""
    engine = Settings(data_dir, url, "bench").open()
    for i, k in enumerate(keys):
        db.write_tx(engine, lambda c, k=k, i=i: credentials.add_agent(c, "acme", f"a{i}", k.public_b64, 0))
    ingest_lines(engine, lines[:1])  # statements compiled, keys loaded: not what is measured
    todo = lines[1:]
    server0 = None if db_pid is None else cpu_seconds(db_pid)
    cpu0 = time.process_time()
    for i in range(0, len(todo), per_request):
        results = ingest_lines(engine, todo[i : i + per_request])
        assert all(r["status"] == "accepted" for r in results), results[:2]
    cpu = (time.process_time() - cpu0) / len(todo)
    server = None if server0 is None else (cpu_seconds(db_pid) - server0) / len(todo)  # type: ignore[arg-type, operator]
    engine.dispose()
    return cpu, server


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--heartbeats", type=int, default=2400)
    ap.add_argument("--backends", default="sqlite,postgresql")
    args = ap.parse_args()
    tune_gc()
    keys, lines = make_heartbeats(args.heartbeats, 12)
    cluster = None
    try:
        for name in args.backends.split(","):
            pid = None
            if name == "postgresql":
                cluster = PgCluster(durable=True)
                pid = int((cluster.dir / "data" / "postmaster.pid").read_text().split()[0])
            got = {}
            for per in (1, BATCH):
                tmp = Path(tempfile.mkdtemp(prefix="tr7-bench-small-"))
                url = f"sqlite:///{tmp / 'c.db'}" if cluster is None else new_database(cluster.admin_url)
                got[per] = run(url, tmp / "data", keys, lines, per, pid)
            (one, s1), (many, sn) = got[1], got[BATCH]
            server = "" if s1 is None else f"; the server's own {s1 * 1e6:,.0f} and {sn * 1e6:,.0f} us"  # type: ignore[operator]
            print(f"{name}: collector CPU per heartbeat, requests of 1: {one * 1e6:,.0f} us, of {BATCH}: "
                  f"{many * 1e6:,.0f} us = x{one / many:.1f}{server}")
    finally:
        if cluster is not None:
            cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
