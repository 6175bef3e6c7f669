"""What `tr7-collector prune` gives back and what it costs, against the same run's baselines.

A month of --agents agents polling 50 instances every --interval seconds (default: one agent
every 60 s, 43,200 heartbeats, docs/collector.md's disk figure), closed, on SQLite and on a
throwaway PostgreSQL (durable, as in service):
- time: `prune` (export, verify, seal, drop) against `export` followed by `tr7-audit verify` of
  the same month, the work an operator would do by hand before deleting anything (goal: prune
  costs at most 1.25x that: the drop itself is small beside writing and checking the bundle);
- space: the database after `prune` and a compaction (SQLite `VACUUM`, PostgreSQL `VACUUM FULL`,
  without ANALYZE: the planner's statistics are then stale, the worst case for what follows),
  against before, and the archived bundle's size;
- undo: `unprune --from` the archive (each line checked against its leaf hash, then written
  back) against `export` of the month, the same lines the other way; then the month exported
  again must give the archive's `heartbeats.jws` byte for byte;
- compressed: the month pruned again with `--compress` (what the packaged timer runs) against the
  same baseline, and against it plus `tar -czf` of the exported directory (what an operator
  keeping .tar.gz files would do by hand: the goal, 1.25x, applies to that), its .tar.gz against
  the directory's size, and `tr7-audit verify` of
  the .tar.gz as it is (extracted to a temporary directory first) against verify of the
  directory. Never asserts a time. Usage:
    .venv/bin/python bench/bench_prune.py [--agents 1] [--interval 60] [--backends sqlite,postgresql]
"""

import argparse
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._agentmonth import agent_key, sign_agent_month
from bench.bench_bill import PER_AGENT, catalog
from collector import accounting, credentials, db, highwater, registry
from collector.db import make_engine
from collector.ingest import ingest_lines
from collector.pgtemp import PgCluster, new_database
from collector.settings import Settings
from protocol.timefmt import month_bounds

MONTH = "2026-09"

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", *args], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def _collector(st: Settings, *args: str) -> float:
    return _run("collector.cli", *args, "--data-dir", str(st.data_dir), "--db", st.db_url)


def month(tmp: Path, url: str, agents: int, interval: int) -> Settings:
    st = Settings(tmp / "data", url, "bench")
    engine = st.open()
    db.write_tx(engine, lambda c: registry.apply_catalog(c, catalog(agents)))
    for a in range(agents):
        key = agent_key("prune", a)
        db.write_tx(engine, lambda c, k=key, a=a: credentials.add_agent(c, "acme", f"a{a}", k.public_b64, 0))
        lines = sign_agent_month(key, MONTH, a, PER_AGENT, interval, 30 + a)
        for i in range(0, len(lines), 2000):
            ingest_lines(engine, lines[i : i + 2000], month_bounds(MONTH)[1])
    db.write_tx(engine, lambda c: accounting.close(c, st, "acme", MONTH))
    engine.dispose()
    return st


def _size(st: Settings, compact: bool = False) -> int:
    """The database's bytes on disk; ``compact``: after giving freed space back to the file system
    (SQLite: VACUUM; PostgreSQL: VACUUM FULL), as an operator may once in a while."""
    if st.db_url.startswith("sqlite:///"):
        path = Path(st.db_url.removeprefix("sqlite:///"))
        with sqlite3.connect(path) as c:
            if compact:
                c.execute("VACUUM")
            c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))  # with -wal and -shm
    engine = make_engine(st.db_url)
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
            if compact:
                c.exec_driver_sql("VACUUM FULL")
            return int(c.exec_driver_sql("SELECT pg_database_size(current_database())").scalar_one())
    finally:
        engine.dispose()


def _tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run(tmp: Path, url: str, name: str, agents: int, interval: int) -> None:
    st = month(tmp, url, agents, interval)
    before = _size(st)
    exported = _collector(st, "export", "--provider", "acme", "--month", MONTH, "--out", str(tmp / "b"))
    verified = _run("audit.cli", "verify", str(tmp / "b"))
    base = exported + verified
    took = _collector(st, "prune", "--provider", "acme", "--month", MONTH, "--out", str(tmp / "archive"))
    pruned, after = _size(st), _size(st, compact=True)
    lines = len((tmp / "archive" / "heartbeats.jws").read_bytes().splitlines())
    print(f"{name}, a month of {lines:,} heartbeats: database {before / 1e6:,.1f} MB")
    print(f"  export + tr7-audit verify: {base:.1f} s; prune (the same, then seal and drop): {took:.1f} s "
          f"= {took / base:.2f}x (goal <= 1.25)")
    print(f"  database after prune {pruned / 1e6:,.1f} MB (freed space stays in the files), compacted "
          f"{after / 1e6:,.1f} MB = {after / before:.2f} of before; the archived bundle "
          f"{_tree_size(tmp / 'archive') / 1e6:,.1f} MB (uncompressed text)")
    undone = _collector(st, "unprune", "--provider", "acme", "--month", MONTH, "--from", str(tmp / "archive"))
    _collector(st, "export", "--provider", "acme", "--month", MONTH, "--out", str(tmp / "again"))
    jws = "heartbeats.jws"
    same = (tmp / "again" / jws).read_bytes() == (tmp / "archive" / jws).read_bytes()
    print(f"  unprune from the archive: {undone:.1f} s = {undone / exported:.2f}x export ({exported:.1f} s); "
          f"database then {_size(st) / 1e6:,.1f} MB; exported again: heartbeats.jws "
          + ("byte-identical to the archive's" if same else "DIFFERS from the archive's"))


def run_compressed(tmp: Path, url: str, agents: int, interval: int) -> None:
    """prune --compress on a fresh copy of the month (a month pruned and put back carries the old
    row versions of both, which slowed a second prune on PostgreSQL by a third)."""
    tmp.mkdir()
    st = month(tmp, url, agents, interval)
    exported = _collector(st, "export", "--provider", "acme", "--month", MONTH, "--out", str(tmp / "b"))
    verified = _run("audit.cli", "verify", str(tmp / "b"))
    t = time.perf_counter()
    subprocess.run(["tar", "-czf", str(tmp / "b.tar.gz"), "-C", str(tmp), "b"], check=True)
    base, by_hand = exported + verified, exported + verified + time.perf_counter() - t
    packed = _collector(st, "prune", "--provider", "acme", "--month", MONTH, "--out", str(tmp / "c"),
                        "--compress")
    tgz = tmp / "c.tar.gz"
    check = _run("audit.cli", "verify", str(tgz))
    print(f"  prune --compress (a fresh copy of the month): {packed:.1f} s = {packed / base:.2f}x export + "
          f"verify ({base:.1f} s), {packed / by_hand:.2f}x export + verify + tar -czf ({by_hand:.1f} s; goal "
          f"<= 1.25); {tgz.stat().st_size / 1e6:,.1f} MB = "
          f"1/{_tree_size(tmp / 'b') / tgz.stat().st_size:.0f} of the directory; tr7-audit verify of the "
          f".tar.gz {check:.1f} s = {check / verified:.2f}x of the directory's ({verified:.1f} s)")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--agents", type=int, default=1)
    ap.add_argument("--interval", type=int, default=60, help="seconds between an agent's polls")
    ap.add_argument("--backends", default="sqlite,postgresql", help="which of sqlite,postgresql to run")
    args = ap.parse_args()
    for name in args.backends.split(","):
        tmp = Path(tempfile.mkdtemp(prefix="tr7-bench-prune-"))
        cluster = PgCluster(durable=True) if name == "postgresql" else None
        try:
            url = f"sqlite:///{tmp / 'collector.db'}" if cluster is None else new_database(cluster.admin_url)
            run(tmp, url, name, args.agents, args.interval)
            url = f"sqlite:///{tmp / 'z.db'}" if cluster is None else new_database(cluster.admin_url)
            run_compressed(tmp / "z", url, args.agents, args.interval)
        finally:
            highwater._flush_all()  # now, not at exit into a removed directory
            if cluster is not None:
                cluster.stop()
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
