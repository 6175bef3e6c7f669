"""A collector host cut off from PostgreSQL in the middle of an ingest does not stop the others.

Found by a review (two hosts, one behind a TCP proxy that stopped relaying): the cut-off host's
session stayed "idle in transaction" holding the log's row lock, and every host's ingest of that
month waited behind it for as long as the kernel kept the dead socket (~15 minutes).
"""

import socket
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from collector import db, pgsession
from collector.ingest import ingest_lines
from collector.pgtemp import new_database
from collector.tlog import lock_log_state
from protocol.timefmt import month_of
from tests._seed import opened


class Partition:
    """TCP on 127.0.0.1 relayed to PostgreSQL's Unix socket, until ``cut``: from then on nothing
    passes either way and the sockets stay open, as when a network path drops packets."""

    def __init__(self, unix_path: str) -> None:
        self.unix_path, self.cut = unix_path, threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.socket(socket.AF_UNIX)
            server.connect(self.unix_path)
            self.held += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._relay, args=(a, b), daemon=True).start()

    def _relay(self, src: socket.socket, dst: socket.socket) -> None:
        while not self.cut.is_set():
            try:
                src.settimeout(0.1)
                data = src.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data or self.cut.is_set():
                return
            dst.sendall(data)

    def close(self) -> None:
        self.listener.close()
        for s in self.held:
            s.close()


def test_a_host_cut_off_mid_ingest_releases_the_log_within_the_idle_timeout(
    pg_admin_url: str, tmp_path: Path, tools: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pgsession, "IDLE_IN_TRANSACTION", "2s")
    direct = new_database(pg_admin_url)
    q = parse_qs(urlsplit(direct).query)
    proxy = Partition(f"{q['host'][0]}/.s.PGSQL.{q['port'][0]}")
    name = urlsplit(direct).path
    try:
        with opened(tmp_path / "b", direct) as host_b:
            agent = tools.Agent()
            tools.enrol(host_b, "acme", agent, 0)
            now = int(time.time())
            month = month_of(now)
            first = [agent.beat(now - 600)]
            assert ingest_lines(host_b.engine, first)[0]["status"] == "accepted"
            host_a = db.make_engine(f"postgresql://postgres@127.0.0.1:{proxy.port}{name}")
            try:
                conn = host_a.connect()
                tx = conn.begin()
                lock_log_state(conn, "acme", month)  # host A holds the month's log, as an ingest does
                proxy.cut.set()
                done: list[Any] = []
                started = time.monotonic()
                later = [agent.beat(now - 300)]
                t = threading.Thread(target=lambda: done.append(ingest_lines(host_b.engine, later)),
                                     daemon=True)
                t.start()
                t.join(60)
                took = time.monotonic() - started
                assert done and done[0][0]["status"] == "accepted", "host B still waits behind host A"
                assert took < 30
                proxy.close()  # host A's socket ends: its transaction is gone, as it must be
                with pytest.raises(Exception):  # noqa: B017 (the driver's error, whichever it is)
                    tx.commit()
                conn.invalidate()
            finally:
                host_a.dispose()
    finally:
        proxy.close()


def test_sessions_carry_the_bounds_and_the_url_overrides_the_client_ones(pg_admin_url: str) -> None:
    from sqlalchemy.engine import make_url

    url = make_url(db.normalise_url(new_database(pg_admin_url)))
    engine = db.make_engine(url.update_query_dict({"keepalives_idle": "99"}).render_as_string(False))
    try:
        with engine.connect() as conn:
            shown = conn.exec_driver_sql("SHOW idle_in_transaction_session_timeout").scalar()
            params = conn.connection.driver_connection.info.get_parameters()  # type: ignore[union-attr]
        assert shown == "2min"
        assert params["keepalives_idle"] == "99" and params["tcp_user_timeout"] == "60000"
        assert params["connect_timeout"] == "10"
    finally:
        engine.dispose()


def test_a_setting_the_url_names_is_left_to_it(pg_admin_url: str) -> None:
    from sqlalchemy.engine import make_url

    url = make_url(db.normalise_url(new_database(pg_admin_url)))
    mine = url.update_query_dict({"options": "-c idle_in_transaction_session_timeout=0"})
    engine = db.make_engine(mine.render_as_string(False))
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SHOW idle_in_transaction_session_timeout").scalar() == "0"
    finally:
        engine.dispose()
