"""Dashboard pages with 2,000 instances x a full month: p50/p95 per page against GET /healthz.

The data goes in through the collector's own ingest (signed heartbeats, hour aggregates); then a
real collector process serves the pages and httpx times N sequential requests per page. The first
(cold) request of each page is printed apart: it fills the billing cache the others hit. Prints
ratios to the /healthz baseline of the same run; never asserts a time. Usage:
    .venv/bin/python bench/bench_pages.py [--instances 2000] [--interval 3600] [--requests 40] [--db URL]
On SQLite and on a throwaway PostgreSQL cluster unless --db names one database.
"""

import argparse
import re
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._agentmonth import agent_key, sign_agent_month  # noqa: E402
from collector import credentials, db, registry  # noqa: E402
from collector.ingest import ingest_lines  # noqa: E402
from collector.pgtemp import PgCluster, new_database  # noqa: E402
from collector.settings import Settings  # noqa: E402
from protocol.keys import AgentKey  # noqa: E402
from tests._serve import serve_collector  # noqa: E402

MONTH = "2026-10"
PER_AGENT = 50
PER_CUSTOMER = 10


def _key(ai: int) -> AgentKey:
    return agent_key("pages", ai)


def sign_chain(args: tuple[int, int]) -> list[str]:
    """One agent's month (a generator, not what is measured)."""
    ai, interval = args
    return sign_agent_month(_key(ai), MONTH, ai, PER_AGENT, interval, 7 + ai % 60)


def catalog(n_agents: int) -> dict:
    insts = [f"TR7-{a:03d}-{j:02d}" for a in range(n_agents) for j in range(PER_AGENT)]
    cap = [{"from": "2026-01-01T00:00:00Z", "bundle": "pro", "bandwidth_mbps": 500, "vservices": 10}]
    return {
        "provider": {"id": "acme", "name": "Acme", "currency": "EUR"},
        "policy": {"gaps": {"mode": "bridge", "max_hours": 2}},
        "bundles": ["basic", "pro"],
        "platform_licenses": [{"id": "PL-1", "valid_from": "2026-01-01T00:00:00Z", "valid_to": None}],
        "customers": [
            {"id": f"c{i}", "name": f"Customer {i}", "downgraded": []}
            for i in range(len(insts) // PER_CUSTOMER)
        ],
        "licenses": [
            {
                "id": f"SL-{i}",
                "customer": f"c{n // PER_CUSTOMER}",
                "instance": i,
                "model": "payg",
                "unit": "hour",
                "start": "2026-01-01T00:00:00Z",
                "end": None,
                "capacity": cap,
            }
            for n, i in enumerate(insts)
        ],
        "rates": {
            "hourly": [{"bundle": "pro", "max_bandwidth_mbps": 1000, "price": "0.0450"}],
            "monthly": [],
        },
    }


def seed(st: Settings, n_agents: int, interval: int) -> int:
    engine = st.open()
    db.write_tx(engine, lambda c: registry.apply_catalog(c, catalog(n_agents)))
    for a in range(n_agents):
        key = _key(a)
        db.write_tx(
            engine, lambda c, k=key, a=a: credentials.add_agent(c, "acme", f"agent-{a}", k.public_b64, 0)
        )
    with ProcessPoolExecutor(max_workers=2) as pool:
        chains = list(pool.map(sign_chain, [(a, interval) for a in range(n_agents)]))
    n = 0
    for chain in chains:
        for i in range(0, len(chain), 1000):
            ingest_lines(engine, chain[i : i + 1000])
            n += len(chain[i : i + 1000])
    token = db.write_tx(engine, lambda c: credentials.new_api_token(c, "acme", "admin", 0))
    engine.dispose()
    return n, token  # type: ignore[return-value]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--instances", type=int, default=2000)
    ap.add_argument("--interval", type=int, default=3600, help="agents' poll interval, seconds")
    ap.add_argument("--requests", type=int, default=40, help="timed requests per page")
    ap.add_argument("--db", help="database URL (default: SQLite in a temp dir, then a throwaway PostgreSQL)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tr7-bench-pages-"))
    cluster = None
    try:
        if args.db:
            urls = [args.db]
        else:
            # PostgreSQL plans by statistics, unanalysed right after the seeding: a page fast on
            # SQLite can be slow there (see collector/chainsql.py), so both are measured.
            cluster = PgCluster()
            urls = [f"sqlite:///{tmp / 'collector.db'}", new_database(cluster.admin_url)]
        for i, url in enumerate(urls):
            bench_db(Settings(tmp / f"data{i}", url, "bench"), args)
        return 0
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def bench_db(st: Settings, args: argparse.Namespace) -> None:
    """Seed one database, serve it, and print each page's cold, p50 and p95 times."""
    n_agents = max(1, args.instances // PER_AGENT)
    t = time.perf_counter()
    lines, token = seed(st, n_agents, args.interval)
    print(
        f"seeded {n_agents * PER_AGENT} instances, {lines} heartbeats in {time.perf_counter() - t:.0f} s "
        f"(db={st.db_url.split(':', 1)[0]})"
    )
    with serve_collector(st, wait=300) as base, httpx.Client(base_url=base, timeout=120) as c:
        csrf = re.search(r'name="csrf" value="([^"]+)"', c.get("/ui/login").text).group(1)  # type: ignore[union-attr]
        c.post("/ui/login", data={"csrf": csrf, "token": token})
        m = f"?month={MONTH}"
        pages = {
            "healthz (baseline)": "/healthz",
            "overview": f"/ui/p/acme{m}",
            "customer": f"/ui/p/acme/customers/c7{m}",
            "instance": f"/ui/p/acme/instances/TR7-003-07{m}",
            "evidence (1 hour)": "/ui/p/acme/instances/TR7-003-07/evidence?hour=2026-10-15T10:00:00Z",
            "agents": f"/ui/p/acme/agents{m}",
            "planner": f"/ui/p/acme/planner/c7{m}&fixed_price=20",
            "audit": "/ui/p/acme/audit",
            "entitlement API": "/v1/entitlements/TR7-003-07",
        }
        bearer = {"Authorization": f"Bearer {token}"}  # the pages use the session cookie
        rows = []
        for name, path in pages.items():
            t0 = time.perf_counter()
            r = c.get(path, headers=bearer)
            cold = time.perf_counter() - t0
            assert r.status_code == 200, (path, r.status_code)
            times = []
            for _ in range(args.requests):
                t0 = time.perf_counter()
                c.get(path, headers=bearer)
                times.append(time.perf_counter() - t0)
            times.sort()
            p95 = times[max(0, int(len(times) * 0.95) - 1)]
            rows.append((name, cold, statistics.median(times), p95))
    base50 = rows[0][2]
    print(f"{'page':22} {'cold ms':>8} {'p50 ms':>8} {'p95 ms':>8} {'p50/base':>9} {'p95/base':>9}")
    for name, cold, p50, p95 in rows:
        ms = f"{cold * 1e3:8.1f} {p50 * 1e3:8.1f} {p95 * 1e3:8.1f}"
        print(f"{name:22} {ms} {p50 / base50:9.1f} {p95 / base50:9.1f}")
    print("goal: p95 under 300 ms per page (machine-dependent; compare the ratios between runs)")


if __name__ == "__main__":
    sys.exit(main())
