"""A stalled or trickling request body is cut (408, connection closed); a compressed body on a route
that cannot inflate it is a 415. Against a real uvicorn server and raw sockets: the timing is the
server's, and a client library would not let a test stall mid-body.

Found by a review: uvicorn has no body timeout, so a client sending a byte a minute held its
connection, its task and its buffered lines for as long as it liked.
"""

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from collector.settings import ENV_BODY_TIMEOUT, SetupError, body_timeout
from tests._seed import opened
from tests._serve import serve_collector

GRACE = 1.0  # seconds: TR7_COLLECTOR_BODY_TIMEOUT for the server under test


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ENV_BODY_TIMEOUT, str(GRACE))
        with opened(tmp_path_factory.mktemp("deadline")) as st, serve_collector(st) as url:
            yield url


def _connect(base: str) -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=15)
    return sock


def _head(path: str, length: int, ctype: str = "text/plain") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


def _answer(sock: socket.socket) -> tuple[int, bytes, bool]:
    """(status, whole answer, whether the server closed the connection after it)."""
    data = b""
    while True:
        try:
            got = sock.recv(65536)
        except TimeoutError:
            return int(data.split(b" ", 2)[1]), data, False
        if not got:
            return int(data.split(b" ", 2)[1]), data, True
        data += got
        if b"\r\n\r\n" in data:
            sock.settimeout(2)  # the answer is in: wait a little for the close, if any


@pytest.mark.parametrize("path", ["/v1/heartbeats", "/v1/agents/enroll"])
def test_a_body_that_stops_is_cut_with_408_and_the_connection_closed(base: str, path: str) -> None:
    ctype = "application/json" if path.endswith("enroll") else "text/plain"
    with _connect(base) as sock:
        start = time.monotonic()
        sock.sendall(_head(path, 100_000, ctype) + b"x" * 10)  # then nothing more
        status, data, closed = _answer(sock)
        took = time.monotonic() - start
    assert status == 408, data
    assert b"stalled" in data and closed
    assert GRACE * 0.9 <= took < GRACE + 5


def test_a_trickle_below_the_minimum_rate_is_cut_though_it_never_pauses_long(base: str) -> None:
    # a byte every 0.3 s: never GRACE without a byte, but ~3 bytes a second
    with _connect(base) as sock:
        sock.sendall(_head("/v1/heartbeats", 100_000))
        start = time.monotonic()
        sock.settimeout(0.3)
        answer = b""
        while not answer and time.monotonic() - start < GRACE + 5:
            try:
                sock.sendall(b"e")
                answer = sock.recv(65536)
            except TimeoutError:
                continue
        took = time.monotonic() - start
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert took < GRACE + 5


def test_a_slow_body_that_keeps_the_rate_is_served(base: str) -> None:
    # 6 kB in pieces over ~1.5 s (4 kB/s, pauses of 0.25 s): longer than GRACE, never refused
    body = b"not-a-jws\n" * 600
    with _connect(base) as sock:
        sock.sendall(_head("/v1/heartbeats", len(body)))
        for i in range(0, len(body), 1000):
            sock.sendall(body[i : i + 1000])
            time.sleep(0.25)
        status, data, _closed = _answer(sock)
    assert status == 200, data
    assert data.count(b'"rejected"') == 600  # every line answered (none is a heartbeat)


def test_a_whole_request_is_not_timed_after_its_body(base: str) -> None:
    # the body ended: the route's own time (here: ingesting) is not the client's to blame
    r = httpx.post(base + "/v1/heartbeats", content=b"x\n" * 4000, headers={"Content-Type": "text/plain"},
                   timeout=30)
    assert r.status_code == 200 and len(r.json()["results"]) == 4000


def test_compressed_bodies_are_415_where_nothing_inflates_them(base: str) -> None:
    gz = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    r = httpx.post(base + "/v1/agents/enroll", content=b"\x1f\x8b" + b"\x00" * 20, headers=gz)
    assert r.status_code == 415 and "only the heartbeat route" in r.json()["detail"]
    # a header on a request without a body changes nothing
    assert httpx.get(base + "/healthz", headers={"Content-Encoding": "gzip"}).status_code == 200
    # identity is no encoding
    ident = {"Content-Type": "application/json", "Content-Encoding": "identity"}
    assert httpx.post(base + "/v1/agents/enroll", content=b"{}", headers=ident).status_code == 422


@pytest.mark.parametrize("value", ["0", "-5", "abc", "nan", "inf", "3601"])
def test_a_bad_timeout_setting_is_refused_in_one_line(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(ENV_BODY_TIMEOUT, value)
    with pytest.raises(SetupError, match=ENV_BODY_TIMEOUT):
        body_timeout()


def test_the_timeout_defaults_to_60_and_takes_fractions(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TR7_COLLECTOR_ENV_FILE", str(tmp_path / "none.env"))
    monkeypatch.delenv(ENV_BODY_TIMEOUT, raising=False)
    assert body_timeout() == 60
    monkeypatch.setenv(ENV_BODY_TIMEOUT, " 2.5 ")
    assert body_timeout() == 2.5


def test_serve_refuses_a_bad_timeout_before_it_listens(tmp_path: Path) -> None:
    env = {**os.environ, ENV_BODY_TIMEOUT: "1m", "TR7_ACCOUNTS_TICK": "0"}
    proc = subprocess.run(
        [sys.executable, "-m", "collector.cli", "serve", "--data-dir", str(tmp_path / "data"),
         "--listen", "127.0.0.1:1"], env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"tr7-collector: {ENV_BODY_TIMEOUT}='1m' must be a number of seconds, over 0 and at most 3600"
    ]


def test_the_minimum_rate_is_a_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from collector.settings import ENV_BODY_MIN_RATE, body_min_rate

    monkeypatch.setenv("TR7_COLLECTOR_ENV_FILE", str(tmp_path / "none.env"))
    monkeypatch.delenv(ENV_BODY_MIN_RATE, raising=False)
    assert body_min_rate() == 1000
    monkeypatch.setenv(ENV_BODY_MIN_RATE, "0")  # none: a link slower than 1 kB/s
    assert body_min_rate() == 0
    for bad in ("-1", "1.5", "fast"):
        monkeypatch.setenv(ENV_BODY_MIN_RATE, bad)
        with pytest.raises(SetupError, match=ENV_BODY_MIN_RATE):
            body_min_rate()
