"""`GET /metrics`: the collector's state in Prometheus' text format, read from the database at each scrape.

Why from the database, not counters kept in the process: several collector processes, on several
hosts behind one load balancer, share one database (docs/collector.md), and a scrape reaches one
of them; what the database holds is the same whichever answers, and survives restarts. The log
only grows, so its size is a counter (`rate()` of it is the ingest rate). Tenancy as the read
API's: a provider's admin token sees its provider's series, the vendor's every provider's; no
series carries money.
"""

import time
from collections.abc import Iterable, Iterator
from importlib.metadata import PackageNotFoundError, version

import sqlalchemy as sa
from fastapi import APIRouter, Request, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.engine import Connection

from collector import alerts, apidoc, db, resultcache
from collector import schema as s
from collector.readapi import ScopeDep
from protocol.timefmt import month_of, previous_month

# Every series /metrics emits (name as exposed: counters with _total), with its help text: the
# catalogue docs/collector.md lists and tests/collector/test_metrics.py checks against the output.
CATALOGUE = {
    "tr7_collector_build_info": "Version of the collector answering",
    "tr7_collector_log_heartbeats_total": "Heartbeats in a provider's log of the current and the previous "
                                          "month (UTC): rate() is the ingest rate",
    "tr7_collector_agents": "Agent keys by state: enrolled (not revoked) or revoked",
    "tr7_collector_agent_last_heartbeat_timestamp_seconds": "Time of an enrolled agent key's latest "
                                                            "heartbeat (its `time`, epoch seconds)",
    "tr7_collector_alerts": "The current month's alerts by type, as GET /v1/providers/{p}/alerts lists them",
    "tr7_collector_rejected_lines_total": "Lines ingest rejected, by the rule they broke (provider empty: "
                                          "no enrolled key named one)",
}

router = APIRouter()
# generate_latest writes the classic text format, which every Prometheus reads; newer clients'
# CONTENT_TYPE_LATEST names format 1.0.0, which Prometheus before 3.0 does not know
TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"


def _version() -> str:
    try:
        return version("tr7-meter")
    except PackageNotFoundError:
        return "unknown"


def families(
    conn: Connection, providers: Iterable[str], now: int, *, role: str, anyone: bool = False
) -> Iterator[Metric]:
    """The metric families of ``providers``, as of ``now``; ``anyone``: with the rejections that
    name no provider (the vendor's scrape: they may be any provider's, or nobody's); ``role``:
    the scraper's, whose alerts it may read (alerts.for_role)."""
    providers = sorted(providers)
    info = InfoMetricFamily("tr7_collector_build", CATALOGUE["tr7_collector_build_info"])
    info.add_metric([], {"version": _version()})
    yield info
    month = month_of(now)
    help_ = CATALOGUE["tr7_collector_log_heartbeats_total"]
    logged = CounterMetricFamily("tr7_collector_log_heartbeats", help_, labels=["provider", "month"])
    G = s.logs.c
    q = sa.select(G.provider, G.month, G.size).where(G.provider.in_(providers),
                                                     G.month.in_([previous_month(month), month]))
    for r in conn.execute(q.order_by(G.provider, G.month)):
        logged.add_metric([r.provider, r.month], int(r.size))
    yield logged
    agents = GaugeMetricFamily("tr7_collector_agents", CATALOGUE["tr7_collector_agents"],
                               labels=["provider", "state"])
    last = GaugeMetricFamily("tr7_collector_agent_last_heartbeat_timestamp_seconds",
                             CATALOGUE["tr7_collector_agent_last_heartbeat_timestamp_seconds"],
                             labels=["provider", "kid", "name"])
    found = GaugeMetricFamily("tr7_collector_alerts", CATALOGUE["tr7_collector_alerts"],
                              labels=["provider", "type"])
    A = s.agents.c
    for p in providers:
        q = sa.select(A.kid, A.name, A.revoked_at).where(A.provider == p)
        rows = conn.execute(q.order_by(A.kid)).all()
        revoked = sum(r.revoked_at is not None for r in rows)
        agents.add_metric([p, "enrolled"], len(rows) - revoked)
        agents.add_metric([p, "revoked"], revoked)
        beats = alerts.last_beats(conn, p)
        for r in rows:
            if r.revoked_at is None and r.kid in beats:
                last.add_metric([p, r.kid, r.name or ""], int(beats[r.kid].time))
        counts: dict[str, int] = {}
        for a in alerts.for_role(resultcache.alerts_of(conn, p, month, now), role):
            counts[a["type"]] = counts.get(a["type"], 0) + 1
        for kind, n in sorted(counts.items()):
            found.add_metric([p, kind], n)
    yield from (agents, last, found)
    help_ = CATALOGUE["tr7_collector_rejected_lines_total"]
    rejected = CounterMetricFamily("tr7_collector_rejected_lines", help_, labels=["provider", "rule"])
    R = s.rejections.c
    q = sa.select(R.provider, R.rule, R.lines).where(R.provider.in_([*providers, *([""] if anyone else [])]))
    for r in conn.execute(q.order_by(R.provider, R.rule)):
        rejected.add_metric([r.provider, r.rule], int(r.lines))
    yield rejected


class _Scrape(Collector):
    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self.metrics


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {TEXT_FORMAT: {}}, "description": "Prometheus text format"},
                       **apidoc.json_errors(apidoc.errors(apidoc.AUTH_ERRORS))})
def metrics(request: Request, scope: ScopeDep) -> Response:
    """The collector's state for Prometheus (a provider's admin token: its provider only)."""
    with db.read_conn(request.app.state.engine) as c:
        ids = c.execute(sa.select(s.providers.c.id).where(scope.provider_filter(s.providers.c.id))).scalars()
        found = list(families(c, ids, int(time.time()), anyone=scope.vendor, role=scope.role))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Scrape(found))
    return Response(generate_latest(registry), media_type=TEXT_FORMAT)
