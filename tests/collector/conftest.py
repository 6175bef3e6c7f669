"""Fixtures: a database per test on SQLite and on a real PostgreSQL, a collector, agents that sign."""

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from collector.pgtemp import PgCluster, new_database
from collector.settings import Settings

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: tests/_seed.py
from tests import _seed
from tests._seed import Agent, catalog, enrol, opened

client = _seed.client  # the shared fixture


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
    with opened(tmp_path, db_url) as st:
        yield st


@pytest.fixture
def tools() -> Any:
    """Helpers for test modules (importlib mode: they cannot import this conftest by name)."""

    class T:
        pass

    T.Agent = Agent  # type: ignore[attr-defined]
    T.enrol = staticmethod(enrol)  # type: ignore[attr-defined]
    T.catalog = staticmethod(catalog)  # type: ignore[attr-defined]
    T.new_pg_database = staticmethod(new_database)  # type: ignore[attr-defined]
    T.migrate_to = staticmethod(_seed.migrate_to)  # type: ignore[attr-defined]
    return T
