"""GET /metrics: what a Prometheus scrape of the collector shows, and to whom.

An operator graphs rate() of the log's heartbeats, alerts on an agent's last heartbeat growing
old and on alerts appearing; a provider's admin token sees only its provider, the vendor token
every provider's; every series is in the catalogue docs/collector.md lists."""

import base64
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from collector import credentials, db
from collector.ingest import ingest_lines
from collector.metrics import CATALOGUE, families
from collector.server import create_app
from protocol.timefmt import month_bounds, month_of
from tests._seed import Agent, apply, catalog, enrol, opened, token

ROOT = Path(__file__).resolve().parents[2]
NOW = int(time.time())
MONTH = month_of(NOW)
M0 = month_bounds(MONTH)[0]
T1, T2 = max(M0, NOW - 120), max(M0 + 1, NOW - 60)  # in this month even in its first minutes


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, dict[str, str], Agent]]:
    """acme: dc1 posts twice, dc2 was revoked; beta (no license) runs TR7-0009 unlicensed."""
    with opened(tmp_path_factory.mktemp("metrics")) as st:
        apply(st, catalog("acme"))
        apply(st, catalog("beta", ["z1"], licenses=[]))
        dc1, dc2, z = Agent("dc1"), Agent("dc2"), Agent("z")
        for provider, a in (("acme", dc1), ("acme", dc2), ("beta", z)):
            enrol(st, provider, a, M0 - 86400)
        db.write_tx(st.engine, lambda c: credentials.revoke_agent(c, dc2.kid, None, NOW))
        tokens = {"vendor": token(st, None, "vendor"), "acme": token(st, "acme", "admin"),
                  "viewer": token(st, "acme", "viewer")}
        with TestClient(create_app(st)) as client:
            for body in ("\n".join(dc1.beat(t, {"TR7-0001": "running"}) for t in (T1, T2)),
                         z.beat(T2, {"TR7-0009": "running"})):
                r = client.post("/v1/heartbeats", content=body, headers={"Content-Type": "text/plain"})
                assert {x["status"] for x in r.json()["results"]} == {"accepted"}
            # rejected: a line of dc1's whose signature is not dc1's, and one that is no JWS at all
            line = dc1.beat(T2, {"TR7-0001": "stopped"}).split(".")
            line[2] = base64.urlsafe_b64encode(bytes(64)).rstrip(b"=").decode()
            r = client.post("/v1/heartbeats", content=".".join(line) + "\nnot a heartbeat",
                            headers={"Content-Type": "text/plain"})
            assert [x["status"] for x in r.json()["results"]] == ["rejected", "rejected"], r.text
            yield client, tokens, dc1


def _samples(client: TestClient, tok: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = client.get("/metrics", headers={"Authorization": f"Bearer {tok}"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {(smp.name, tuple(sorted(smp.labels.items()))): smp.value
            for fam in text_string_to_metric_families(r.text) for smp in fam.samples}


def _get(samples: dict[Any, float], series: str, **labels: str) -> float | None:
    return samples.get((series, tuple(sorted(labels.items()))))


def test_the_vendor_scrapes_every_provider(scraped: Any) -> None:
    client, tokens, dc1 = scraped
    got = _samples(client, tokens["vendor"])
    assert _get(got, "tr7_collector_log_heartbeats_total", provider="acme", month=MONTH) == 2
    assert _get(got, "tr7_collector_log_heartbeats_total", provider="beta", month=MONTH) == 1
    assert _get(got, "tr7_collector_agents", provider="acme", state="enrolled") == 1
    assert _get(got, "tr7_collector_agents", provider="acme", state="revoked") == 1
    assert _get(got, "tr7_collector_agent_last_heartbeat_timestamp_seconds",
                provider="acme", kid=dc1.kid, name="dc1") == T2
    # a revoked key has no last-heartbeat series (nothing to watch any more)
    assert sum(k[0] == "tr7_collector_agent_last_heartbeat_timestamp_seconds" for k in got) == 2
    if month_of(int(time.time())) == MONTH:  # the month did not turn during the test
        assert _get(got, "tr7_collector_alerts", provider="beta", type="unlicensed") == 1
        assert _get(got, "tr7_collector_alerts", provider="acme", type="unlicensed") is None
    rejected = {dict(labels)["provider"]: (dict(labels)["rule"], v) for name, labels in got
                for v in [got[(name, labels)]] if name == "tr7_collector_rejected_lines_total"}
    assert rejected["acme"] == ("signature", 1) and rejected[""][1] == 1
    assert {name for name, _ in got} == set(CATALOGUE)  # every series is catalogued, and shown here


def test_a_providers_admin_sees_only_its_provider_and_a_viewer_nothing(scraped: Any) -> None:
    client, tokens, _ = scraped
    got = _samples(client, tokens["acme"])
    providers = {dict(labels).get("provider") for _, labels in got} - {None}
    assert providers == {"acme"}  # nor the rejections that name no provider (they may be anyone's)
    assert _get(got, "tr7_collector_log_heartbeats_total", provider="acme", month=MONTH) == 2
    assert client.get("/metrics", headers={"Authorization": f"Bearer {tokens['viewer']}"}).status_code == 403
    assert client.get("/metrics").status_code == 401


def test_the_catalogue_is_documented() -> None:
    doc = (ROOT / "docs" / "collector.md").read_text()
    missing = [name for name in CATALOGUE if f"`{name}`" not in doc]
    assert not missing, f"docs/collector.md does not list {missing}"


def test_rejections_are_counted_on_both_engines_from_an_older_database(settings, tools) -> None:
    """Migration 0016 on a database made before it; then counts add up batch after batch."""
    tools.migrate_to(settings, "0015_prune")
    with settings.engine.connect() as c:
        assert not sa.inspect(c).has_table("rejections")
    tools.migrate_to(settings, "head")
    apply(settings, catalog("acme"))
    a = Agent("a")
    enrol(settings, "acme", a, M0 - 86400)
    late = a.beat(NOW + 3600, {"TR7-0001": "running"})  # an hour ahead of the collector's clock
    # the key's own header over a payload that breaks §2 (an agent's bug): counted under acme too
    head, _payload, sig = a.beat(NOW, {"TR7-0001": "running"}).split(".")
    bad = ".".join((head, base64.urlsafe_b64encode(b'{"seq": 0}').decode().rstrip("="), sig))
    for _ in range(2):
        got = ingest_lines(settings.engine, [late, "x.y.z", bad], NOW)
        assert [r["status"] for r in got] == ["rejected", "rejected", "rejected"]
    with db.read_conn(settings.engine) as c:
        got_families = families(c, ["acme"], NOW, role="vendor", anyone=True)
        series = {tuple(smp.labels.values()): smp.value for fam in got_families
                  if fam.name == "tr7_collector_rejected_lines" for smp in fam.samples}
    assert series[("acme", "time.future")] == 2
    assert sum(v for (p, rule), v in series.items() if p == "acme" and rule.startswith("payload")) == 2
    assert sum(v for (p, _rule), v in series.items() if p == "") == 2


def test_migration_0017_merges_rules_counted_by_index(settings, tools) -> None:
    """Rows counted before ingest dropped the indexes become one row a rule: lines summed, the
    latest time kept; other rules unchanged."""
    tools.migrate_to(settings, "0016_rejections")
    rows = [("acme", "payload.observations[3].state", 5, 10), ("acme", "signature", 4, 20),
            ("acme", "payload.observations[71].state", 2, 30), ("", "payload.polls[0].adapter", 1, 5)]
    with settings.engine.begin() as c:
        c.execute(sa.text("INSERT INTO rejections (provider, rule, lines, last_at) VALUES (:p, :r, :n, :t)"),
                  [{"p": p, "r": r, "n": n, "t": t} for p, r, n, t in rows])
    tools.migrate_to(settings, "head")
    with settings.engine.connect() as c:
        got = sorted(tuple(r) for r in c.execute(sa.text("SELECT provider, rule, lines, last_at "
                                                         "FROM rejections")))
    assert got == [("", "payload.polls[].adapter", 1, 5), ("acme", "payload.observations[].state", 7, 30),
                   ("acme", "signature", 4, 20)]


def test_the_vendors_scrape_of_many_providers_is_served_from_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With one bound of 64 entries for every kind, 22 providers made each vendor scrape push out
    its own entries and recompute every provider's alerts inside the request."""
    import billing
    from collector import alerts, billcache, resultcache

    computed: list[str] = []
    real = alerts.clones
    monkeypatch.setattr(alerts, "clones", lambda c, p, m: computed.append(p) or real(c, p, m))
    billed: list[str] = []  # the bills the alerts read (a bound of 32 bills made each scrape redo them)
    real_compute = billing.compute
    monkeypatch.setattr(billing, "compute",
                        lambda a, cat, *r: billed.append(cat.provider) or real_compute(a, cat, *r))
    billcache.clear()
    with opened(tmp_path) as st:
        for i in range(40):
            apply(st, catalog(f"p{i:02d}"))
        vendor = token(st, None, "vendor")
        resultcache._cache.clear()
        with TestClient(create_app(st)) as client:
            for _ in range(2):
                r = client.get("/metrics", headers={"Authorization": f"Bearer {vendor}"})
                assert r.status_code == 200 and 'provider="p39"' in r.text
    assert sorted(computed) == [f"p{i:02d}" for i in range(40)]  # each once, on the first scrape
    assert sorted(billed) == [f"p{i:02d}" for i in range(40)]
