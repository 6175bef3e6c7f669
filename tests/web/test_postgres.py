"""The account tables and the billing overlay on PostgreSQL (the collector's other database)."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from collector import accounting, db
from collector.accounts import store
from collector.ingest import ingest_lines
from collector.pgtemp import PgCluster, new_database
from collector.server import create_app
from collector.settings import Settings
from protocol.timefmt import parse_time

DAY = 86400


@pytest.fixture(scope="module")
def pg_admin() -> Iterator[str]:
    cluster = PgCluster()
    try:
        yield cluster.admin_url
    finally:
        cluster.stop()


@pytest.fixture
def pg_settings(tmp_path: Path, pg_admin: str) -> Iterator[Settings]:
    st = Settings(tmp_path / "data", new_database(pg_admin), "collector.test")
    st.open()  # runs every Alembic revision, ours included, on PostgreSQL
    yield st
    st.engine.dispose()


def test_downgrade_on_postgresql(pg_settings: Settings, tools: Any) -> None:
    tools.apply(pg_settings, tools.catalog())
    agent = tools.Agent()
    tools.enrol(pg_settings, "acme", agent, parse_time("2026-09-01T00:00:00Z"))
    start = parse_time("2026-10-01T00:00:00Z")
    ingest_lines(
        pg_settings.engine, [agent.beat(start + h * 3600 + 60, {"TR7-0001": "running"}) for h in range(744)]
    )
    t0 = parse_time("2026-10-05T00:00:00Z")
    eng = pg_settings.engine
    db.write_tx(eng, lambda c: store.payment_failed(c, "acme", "c1", t0))
    db.write_tx(eng, lambda c: store.tick_all(c, t0 + 15 * DAY))
    db.write_tx(eng, lambda c: store.paid(c, "acme", "c1", t0 + 20 * DAY))
    with db.read_conn(eng) as c:
        assert [x["quantity"] for x in accounting.invoice(c, "acme", "2026-10")["lines"]] == [624]
    with TestClient(create_app(pg_settings)) as client:
        tok = tools.token(pg_settings, "acme", "viewer")
        r = client.get("/v1/entitlements/TR7-0001", headers={"Authorization": f"Bearer {tok}"})
        assert r.json()["entitled"] is True and r.json()["account"] == "active"
