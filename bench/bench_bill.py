"""Bill 2,000 instances x 1 month from the collector's hour aggregates vs the full recomputation.

Prints the ratio of their medians (goal >= 50x); never asserts a time. Usage:
    .venv/bin/python bench/bench_bill.py [--instances 2000] [--interval 1800] [--db URL]
On SQLite and on a throwaway PostgreSQL cluster unless --db names one database.
"""

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy.engine import Connection, Engine

from bench._agentmonth import agent_key, sign_agent_month
from billing import Activity, compute, load_catalog
from billing.activity import MonthBits
from collector import accounting, billcache, credentials, db, evidence, registry
from collector import schema as s
from collector.gctune import tune_gc
from collector.ingest import ingest_lines
from collector.pgtemp import PgCluster, new_database
from collector.settings import Settings
from protocol.keys import AgentKey
from protocol.timefmt import month_bounds

MONTH = "2026-09"
PER_AGENT = 50
T = TypeVar("T")


def sign_chain(args: tuple[int, int, int]) -> list[str]:
    """One agent's month of heartbeats (a generator, not the thing measured)."""
    ai, n_inst, interval = args
    key = AgentKey.generate() if ai < 0 else agent_key("bench", ai)
    return sign_agent_month(key, MONTH, ai, n_inst, interval, ai % interval)


def _ingest(args: tuple[str, str, list[str]]) -> int:
    data_dir, url, lines = args
    engine = Settings(Path(data_dir), url, "bench").engine
    n = 0
    for i in range(0, len(lines), 2000):
        n += sum(r["status"] == "accepted" for r in ingest_lines(engine, lines[i : i + 2000]))
    return n


def as_bitsets(act: Activity) -> Activity:
    """The same activity with its hours as per-instance bitsets of the month."""
    month = MonthBits(*month_bounds(MONTH))
    masks = {i: act.month_masks(i, month) for i in act.instances()}
    return Activity(declared=act.declared, bits_base=month.m0,
                    active_bits={i: m[0] for i, m in masks.items()},
                    seen_bits={i: m[1] for i, m in masks.items()})


def catalog(n_agents: int) -> dict:
    lic = [
        {
            "id": f"SL-{a}-{j}",
            "customer": f"c{a % 20}",
            "instance": f"TR7-{a:03d}-{j:02d}",
            "model": "payg",
            "unit": "hour",
            "start": "2026-01-01T00:00:00Z",
            "end": None,
            "capacity": [
                {"from": "2026-01-01T00:00:00Z", "bundle": "pro", "bandwidth_mbps": 500, "vservices": 10}
            ],
        }
        for a in range(n_agents)
        for j in range(PER_AGENT)
    ]
    return {
        "provider": {"id": "acme", "name": "Acme", "currency": "EUR"},
        "policy": {"gaps": {"mode": "evidence"}},
        "bundles": ["basic", "pro"],
        "platform_licenses": [{"id": "PL-1", "valid_from": "2026-01-01T00:00:00Z", "valid_to": None}],
        "customers": [{"id": f"c{i}", "name": f"Customer {i}", "downgraded": []} for i in range(20)],
        "licenses": lic,
        "rates": {
            "hourly": [{"bundle": "pro", "max_bandwidth_mbps": 1000, "price": "0.0450"}],
            "monthly": [],
        },
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--instances", type=int, default=2000)
    ap.add_argument("--interval", type=int, default=1800, help="agents' poll interval, seconds")
    ap.add_argument("--db", help="database URL (default: SQLite in a temp dir, then a throwaway PostgreSQL)")
    args = ap.parse_args()
    tune_gc()  # the GC policy of every tr7-collector process: both paths run under it
    n_agents = max(1, args.instances // PER_AGENT)
    tmp = Path(tempfile.mkdtemp(prefix="tr7-bench-bill-"))
    cluster = None
    try:
        t = time.perf_counter()
        with ProcessPoolExecutor() as pool:
            chains = list(pool.map(sign_chain, [(a, PER_AGENT, args.interval) for a in range(n_agents)]))
        lines = [x for ch in chains for x in ch]
        print(
            f"generated {len(lines)} heartbeats x {PER_AGENT} observations in {time.perf_counter() - t:.1f} s"
        )
        if args.db:
            urls = [args.db]
        else:
            # Both engines by default: PostgreSQL plans its queries by statistics, SQLite does not,
            # and a plan that is fast on one can be slow on the other (collector/chainsql.py).
            cluster = PgCluster()
            urls = [f"sqlite:///{tmp / 'collector.db'}", new_database(cluster.admin_url)]
        ok = True
        for i, url in enumerate(urls):
            ok &= bench_db(Settings(tmp / f"data{i}", url, "bench"), n_agents, args.interval, lines)
        return 0 if ok else 1
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(tmp, ignore_errors=True)


REPEAT = 3


def _fresh(path: Callable[[Connection, str, str], T], conn: Connection) -> T:
    """One bill by ``path``, computed: nothing reused from an earlier call."""
    billcache.clear()
    return path(conn, "acme", MONTH)


def _median(call: Callable[[], T]) -> tuple[T, float]:
    """The result of ``call`` and the median of REPEAT timed calls, after one untimed."""
    out = call()
    times = []
    for _ in range(REPEAT):
        t = time.perf_counter()
        out = call()
        times.append(time.perf_counter() - t)
    return out, statistics.median(times)


VACUUMED = ("leaves", "days", "capacities")
VACUUM_AFTER = s.VACUUM_AFTER_INSERTS["autovacuum_vacuum_insert_threshold"]


def _await_autovacuum(engine: Engine, limit: float = 300) -> float | None:
    """Seconds until PostgreSQL's autovacuum has vacuumed each table the bill reads since the
    ingest (collector/schema.py VACUUM_AFTER_INSERTS: after every 10,000 new rows), or None
    past ``limit``. Right after a bulk ingest no page of the month has its visibility-map bit,
    and billing's index-only scans fetch every row from the table too; a month billed at its
    end has been stored for days, and vacuumed. Nothing is vacuumed by hand: this waits for
    autovacuum (it wakes once a minute); the collector's settings make it run after every 10,000 new
    rows whatever the table's size, where by default a table of a few months waits for 20% more."""
    t0 = time.perf_counter()
    names = ", ".join(f"'{t}'" for t in VACUUMED)
    while time.perf_counter() - t0 < limit:
        with engine.connect() as c:
            done = c.exec_driver_sql(
                f"SELECT count(*) FROM pg_stat_user_tables WHERE relname IN ({names}) "
                f"AND autovacuum_count > 0 AND n_ins_since_vacuum < {VACUUM_AFTER}"
            ).scalar()
        if done == len(VACUUMED):
            return time.perf_counter() - t0
        time.sleep(2)
    return None


def bench_db(st: Settings, n_agents: int, interval: int, lines: list[str]) -> bool:
    """Ingest the month into one database, then time both paths; whether their results agree."""
    engine = st.open()
    db.write_tx(engine, lambda c: registry.apply_catalog(c, catalog(n_agents)))
    for a in range(n_agents):
        kid_key = agent_key("bench", a)
        db.write_tx(engine, lambda c, k=kid_key, a=a: credentials.add_agent(c, "acme", f"a{a}", k.public_b64,
                                                                            0))
    t = time.perf_counter()
    parts = [lines[i::2] for i in range(2)]
    with ProcessPoolExecutor(2) as pool:
        accepted = sum(pool.map(_ingest, [(str(st.data_dir), st.db_url, p) for p in parts]))
    print(f"ingested {accepted} in {time.perf_counter() - t:.1f} s")
    if engine.dialect.name == "postgresql":
        with db.read_conn(engine) as c:
            _, t_new = _median(lambda: _fresh(accounting.own_result, c))
        waited = _await_autovacuum(engine)
        print(f"bill from aggregates as ingested: {t_new:.3f} s; then autovacuum "
              + (f"had vacuumed the month's tables {waited:.0f} s later (what a stored month is like)"
                 if waited is not None else "had not run within the wait: measured as it is"))
    with db.read_conn(engine) as c:
        # Each path is called once untimed, then timed REPEAT times (the median is printed): a
        # process's first call also compiles its SQL statements and imports what it imports
        # lazily, ~60 ms of one-time cost that a serving collector does not pay per bill.
        agg, t_agg = _median(lambda: _fresh(accounting.own_result, c))
        # Where the time of the aggregate path goes: the store's part vs billing.compute itself.
        t = time.perf_counter()
        analysis = evidence.chain_analysis(c, "acme", MONTH)
        t_chain = time.perf_counter() - t
        bundles = load_catalog(registry.latest_catalog(c, "acme")[1]).bundles
        t = time.perf_counter()
        act = evidence.activity(c, "acme", MONTH, analysis.quarantined, bundles)
        t_days = time.perf_counter() - t
        # The reference the database's chain rules replace: every leaf read, analyze_links run.
        t = time.perf_counter()
        same_chains = evidence.chain_analysis_rows(c, "acme", MONTH) == analysis
        t_rows = time.perf_counter() - t
        doc = registry.latest_catalog(c, "acme")[1]
        t = time.perf_counter()
        cat = load_catalog(doc)
        t_cat = time.perf_counter() - t
        t = time.perf_counter()
        result = compute(act, cat, MONTH, analysis.chains_json())
        t_compute = time.perf_counter() - t
        # The same hours as bitsets (Activity.active_bits/seen_bits): what compute costs when
        # the collector hands over its day bitmaps without expanding them into sets of hours.
        bits = as_bitsets(act)
        t = time.perf_counter()
        same_bits = compute(bits, cat, MONTH, analysis.chains_json()) == result
        t_bits = time.perf_counter() - t
        full, t_full = _median(lambda: _fresh(accounting.full_result, c))
    same = accounting.same_docs(agg, full)
    print(
        f"instances={n_agents * PER_AGENT} interval={interval}s heartbeats={len(lines)} "
        f"db={engine.dialect.name}"
    )
    print(
        f"bill from aggregates: {t_agg:.3f} s; full recomputation: {t_full:.2f} s (medians of {REPEAT}); "
        f"ratio {t_full / t_agg:.1f}x (goal >= 50x); identical results: {same}"
    )
    print(
        f"  aggregate path = chain rules {t_chain:.3f} s beside day bitmaps {t_days:.3f} s "
        f"(on two connections at once, collector/beside.py) + catalog {t_cat:.3f} s "
        f"+ billing.compute {t_compute:.3f} s (catalog and compute shared by both paths)"
    )
    print(
        f"  chain rules run by the database {t_chain:.3f} s, every leaf read + analyze_links "
        f"{t_rows:.3f} s; same analysis: {same_chains}"
    )
    print(f"  billing.compute from the activity as read {t_compute:.2f} s, from its hours as bitsets "
          f"{t_bits:.2f} s; same result: {same_bits}")
    engine.dispose()
    return same and same_bits and same_chains


if __name__ == "__main__":
    sys.exit(main())
