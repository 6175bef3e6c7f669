"""The database unavailable: a 503 with Retry-After and one log line, not a 500 and a traceback
per request; /readyz tells a load balancer, /healthz stays the process's liveness.

Found by a review (PostgreSQL restarted under load): 141 bare "Internal Server Error" answers and
~70 tracebacks a host in 10 seconds, while /healthz said ok.
"""

import logging
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from collector.pgtemp import new_database
from collector.server import create_app
from tests import _seed
from tests._seed import opened


def _admin(admin_url: str, sql: str) -> None:
    with psycopg.connect(admin_url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as c:
        c.execute(sql)


def test_ingest_and_pages_answer_503_while_the_database_refuses_connections(
    pg_admin_url: str, tmp_path: Path, tools: Any, caplog: pytest.LogCaptureFixture
) -> None:
    url = new_database(pg_admin_url)
    name = url.split("?")[0].rsplit("/", 1)[1]
    with opened(tmp_path, url) as st, TestClient(create_app(st)) as client:
        agent = tools.Agent()
        tools.enrol(st, "acme", agent, 0)
        assert client.get("/readyz").status_code == 200
        token = _seed.token(st, None, "vendor")
        body = (agent.beat(int(time.time()) - 60) + "\n").encode()
        hdr = {"Content-Type": "text/plain"}
        # as PostgreSQL does in a restart or a failover: sessions ended, new ones refused
        _admin(pg_admin_url, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        _admin(pg_admin_url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                             f"WHERE datname = '{name}'")
        try:
            with caplog.at_level(logging.ERROR, logger="collector.server"):
                r = client.post("/v1/heartbeats", content=body, headers=hdr)
            assert r.status_code == 503 and r.headers["Retry-After"] == "10"
            assert r.json() == {"detail": "the database is unavailable; retry later"}
            lines = [x for x in caplog.records if "event=database_unavailable" in x.getMessage()]
            assert len(lines) == 1 and lines[0].exc_info is None  # one line, no traceback
            assert client.get("/readyz").status_code == 503
            assert client.get("/healthz").status_code == 200  # the process is alive
            read = client.get("/v1/providers", headers={"Authorization": f"Bearer {token}"})
            assert read.status_code == 503  # the read API too
        finally:
            _admin(pg_admin_url, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        # back by itself, without a restart: the agent's retry is stored
        r = client.post("/v1/heartbeats", content=body, headers=hdr)
        assert r.status_code == 200 and r.json()["results"][0]["status"] == "accepted"
        assert client.get("/readyz").status_code == 200


def test_only_errors_of_an_unavailable_database_are_503(pg_admin_url: str, tmp_path: Path) -> None:
    # Diff review: every OperationalError was "unavailable", a missing table too (retried for ever)
    import sqlalchemy as sa
    from sqlalchemy.exc import DBAPIError

    from collector import db

    def error_of(engine: Any, sql: str) -> DBAPIError:
        with pytest.raises(DBAPIError) as caught, engine.connect() as c:
            c.exec_driver_sql(sql)
        return caught.value

    lite = sa.create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    assert not db.unavailable(error_of(lite, "SELECT * FROM no_such_table"))
    pg = db.make_engine(new_database(pg_admin_url))
    try:
        assert not db.unavailable(error_of(pg, "SELECT * FROM no_such_table"))  # 42P01
        assert not db.unavailable(error_of(pg, "SELECT 1/0"))  # 22012
        assert db.unavailable(error_of(pg, "SELECT pg_terminate_backend(pg_backend_pid())"))  # 57P01
    finally:
        pg.dispose()


def test_a_database_file_that_cannot_be_written_is_unavailable_not_a_fault(tmp_path: Path) -> None:
    """SQLITE_READONLY (a collector.db its user may not write) is the operator's to mend, like a full
    disk: a 503 the agents retry, one log line, where it was a 500 and a traceback a batch."""
    import sqlite3

    import sqlalchemy as sa

    from collector import db

    path = tmp_path / "c.db"
    sqlite3.connect(path).execute("CREATE TABLE t (x)").connection.commit()
    engine = sa.create_engine(f"sqlite:///file:{path}?mode=ro&uri=true")
    with pytest.raises(sa.exc.OperationalError) as caught, engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO t VALUES (1)")
    assert "readonly" in str(caught.value) and db.unavailable(caught.value)
