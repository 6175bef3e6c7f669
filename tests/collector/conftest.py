"""Fixtures: a database per test on SQLite and on a real PostgreSQL, a collector, agents that sign."""

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from collector import db, registry
from collector.pgtemp import PgCluster, new_database
from collector.server import create_app
from collector.settings import Settings
from protocol.heartbeat import ZERO_HASH, sign_heartbeat, token_digest
from protocol.keys import AgentKey
from protocol.timefmt import format_time


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    url = os.environ.get("TR7_TEST_PG_URL")
    if url:
        yield url
        return
    cluster = PgCluster()
    try:
        yield cluster.admin_url
    finally:
        cluster.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'collector.db'}"
    return new_database(request.getfixturevalue("pg_admin_url"))


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Iterator[Settings]:
    st = Settings(tmp_path / "data", db_url, "collector.test")
    st.open()
    yield st
    st.engine.dispose()


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


class Agent:
    """A signing agent for tests: keeps its chain (seq, prev) like tr7-agent does."""

    def __init__(self, name: str = "agent", key: AgentKey | None = None) -> None:
        self.name = name
        self.key = key or AgentKey.generate()
        self.seq, self.prev = 1, ZERO_HASH

    @property
    def kid(self) -> str:
        return self.key.kid

    def beat(
        self,
        t: int,
        instances: dict[str, str] | None = None,
        vm: str | None = None,
        capacity: dict[str, Any] | None = None,
        interval: int = 600,
    ) -> str:
        """Sign the next heartbeat at ``t`` observing ``instances`` (instance -> state)."""
        obs = [
            {
                "instance": i,
                "adapter": "a1",
                "vm": vm or f"vm-{i}",
                "host": "h1",
                "state": st,
                "capacity": capacity,
            }
            for i, st in sorted((instances or {}).items())
        ]
        payload = {
            "v": 1,
            "agent": self.kid,
            "seq": self.seq,
            "prev": self.prev,
            "time": format_time(t),
            "interval": interval,
            "polls": [{"adapter": "a1", "platform": "kvm", "ok": True, "error": None}],
            "observations": obs,
        }
        token = sign_heartbeat(self.key, payload)
        self.seq, self.prev = self.seq + 1, token_digest(token)
        return token


def enrol(settings: Settings, provider: str, agent: Agent, at: int) -> None:
    db.write_tx(
        settings.engine, lambda c: registry.add_agent(c, provider, agent.name, agent.key.public_b64, at)
    )


def catalog(provider: str = "acme", licenses: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "provider": {"id": provider, "name": provider.title(), "currency": "EUR"},
        "policy": {"gaps": {"mode": "evidence"}},
        "bundles": ["basic", "pro"],
        "platform_licenses": [{"id": "PL-1", "valid_from": "2026-01-01T00:00:00Z", "valid_to": None}],
        "customers": [{"id": "c1", "name": "Example GmbH", "downgraded": []}],
        "licenses": licenses
        if licenses is not None
        else [
            {
                "id": "SL-1",
                "customer": "c1",
                "instance": "TR7-0001",
                "model": "payg",
                "unit": "hour",
                "start": "2026-01-01T00:00:00Z",
                "end": None,
                "capacity": [
                    {"from": "2026-01-01T00:00:00Z", "bundle": "pro", "bandwidth_mbps": 500, "vservices": 10}
                ],
            }
        ],
        "rates": {
            "hourly": [{"bundle": "pro", "max_bandwidth_mbps": 1000, "price": "0.0450"}],
            "monthly": [],
        },
    }


@pytest.fixture
def tools() -> Any:
    """Helpers for test modules (importlib mode: they cannot import this conftest by name)."""

    class T:
        pass

    T.Agent = Agent  # type: ignore[attr-defined]
    T.enrol = staticmethod(enrol)  # type: ignore[attr-defined]
    T.catalog = staticmethod(catalog)  # type: ignore[attr-defined]
    T.new_pg_database = staticmethod(new_database)  # type: ignore[attr-defined]
    return T
