"""A request whose headers do not end in time is answered 408 and its connection closed, against a
real `tr7-collector serve` (its uvicorn, its workers) and raw sockets.

Found by a review: uvicorn times nothing before the headers end, so a connection sending `X-A: `
and then nothing (or a byte every few seconds) stayed open for good; 3,000 of them took a worker
to 1,559 file descriptors, and a few tens of thousands would run the workers out.
"""

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from collector.settings import ENV_HEADER_TIMEOUT, SetupError, header_timeout
from tests._serve import free_port

TIMEOUT = 1.5  # seconds: TR7_COLLECTOR_HEADER_TIMEOUT for the server under test


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    tmp = tmp_path_factory.mktemp("headers")
    port, log = free_port(), tmp / "serve.log"
    env = {**os.environ, ENV_HEADER_TIMEOUT: str(TIMEOUT), "TR7_ACCOUNTS_TICK": "0", "TR7_WEB_WARM": "0"}
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "collector.cli", "serve", "--data-dir", str(tmp / "d"),
                                 "--listen", f"127.0.0.1:{port}", "--workers", "2"],
                                stdout=out, stderr=out, env=env)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        yield port, log
    finally:
        proc.terminate()
        proc.wait(60)


def _until_closed(sock: socket.socket, limit: float, trickle: bytes = b"") -> tuple[bytes, float]:
    """What the server sent until it closed the connection, and after how many seconds; a byte of
    ``trickle`` is sent every 0.3 s meanwhile."""
    start, data = time.monotonic(), b""
    sock.settimeout(0.3)
    while time.monotonic() - start < limit:
        try:
            got = sock.recv(65536)
        except TimeoutError:
            if trickle:
                with contextlib.suppress(OSError):  # the server has closed it: the next recv says so
                    sock.sendall(trickle)
            continue
        except ConnectionResetError:
            break
        if not got:
            break
        data += got
    return data, time.monotonic() - start


@pytest.mark.parametrize("trickle", [b"", b"a"], ids=["silent", "a byte every 0.3 s"])
def test_headers_that_never_end_are_cut(served: tuple[int, Path], trickle: bytes) -> None:
    port, log = served
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /v1/heartbeats HTTP/1.1\r\nHost: x\r\nX-A: ")
        data, took = _until_closed(sock, TIMEOUT + 20, trickle)
    assert data.startswith(b"HTTP/1.1 408 "), data
    assert b"connection: close" in data.lower()
    assert "did not end" in json.loads(data.split(b"\r\n\r\n", 1)[1])["detail"]  # JSON, as declared
    assert TIMEOUT - 0.2 <= took < TIMEOUT + 10  # a fixed total: trickling does not stretch it
    assert "event=header_timeout" in log.read_text()


def test_a_connection_that_sends_nothing_is_closed(served: tuple[int, Path]) -> None:
    port, _ = served
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        data, took = _until_closed(sock, TIMEOUT + 20)
    assert data.startswith(b"HTTP/1.1 408 ") and took < TIMEOUT + 10


def test_a_kept_alive_connection_times_its_next_request_too(served: tuple[int, Path]) -> None:
    """The deadline is armed again by the next request's first byte (uvicorn's keep-alive timer
    stops at that byte)."""
    port, _ = served
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first = b""
        while b"\r\n\r\n" not in first:
            first += sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200 ")
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHo")
        data, took = _until_closed(sock, TIMEOUT + 20)
    assert b"HTTP/1.1 408 " in data and took < TIMEOUT + 10


def test_slow_but_finished_headers_are_served(served: tuple[int, Path]) -> None:
    """Headers that end within the deadline, however they trickle, get their answer."""
    port, _ = served
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        for piece in (request[:10], request[10:30], request[30:]):
            sock.sendall(piece)
            time.sleep(TIMEOUT / 4)
        data, _ = _until_closed(sock, 10)
    assert data.startswith(b"HTTP/1.1 200 "), data


def test_the_header_timeout_is_a_checked_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TR7_COLLECTOR_ENV_FILE", str(tmp_path / "none.env"))
    monkeypatch.delenv(ENV_HEADER_TIMEOUT, raising=False)
    assert header_timeout() == 20
    monkeypatch.setenv(ENV_HEADER_TIMEOUT, "5")
    assert header_timeout() == 5
    for bad in ("0", "-1", "nan", "1h", "3601"):
        monkeypatch.setenv(ENV_HEADER_TIMEOUT, bad)
        with pytest.raises(SetupError, match=ENV_HEADER_TIMEOUT):
            header_timeout()


def test_pipelined_requests_get_their_answers_before_any_408(monkeypatch: pytest.MonkeyPatch) -> None:
    """The deadline fired while earlier requests were still being answered and wrote its 408
    first, which a client reads as the answer to its first request (a review of the change). An
    in-process uvicorn with the protocol and an app whose /slow takes 2 s; the deadline is 0.5 s."""
    import asyncio
    import threading

    import uvicorn

    from collector import headerdeadline

    monkeypatch.setenv(ENV_HEADER_TIMEOUT, "0.5")
    monkeypatch.setenv("TR7_COLLECTOR_ENV_FILE", "/nonexistent")
    headerdeadline._timeout.cache_clear()

    async def app(scope: dict, receive: object, send: object) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/slow":
            await asyncio.sleep(2)
        body = scope["path"].encode()
        await send({"type": "http.response.start", "status": 200,  # type: ignore[operator]
                    "headers": [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})  # type: ignore[operator]

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           http=headerdeadline.HeaderDeadline))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive()
            time.sleep(0.05)

        def get(path: str) -> bytes:
            return f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()

        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            third = get("/c")  # its headers end 0.2 s after the first two requests
            sock.sendall(get("/slow") + get("/b") + third[:10])
            time.sleep(0.2)
            sock.sendall(third[10:] + b"GET /d HTTP/1.1\r\nHo")  # and a fourth that never ends
            data, _ = _until_closed(sock, 30)
        answers = data.split(b"HTTP/1.1 ")[1:]
        assert [a[:3] for a in answers] == [b"200", b"200", b"200", b"408"], data
        assert [a.rsplit(b"\r\n\r\n", 1)[1] for a in answers[:3]] == [b"/slow", b"/b", b"/c"]
    finally:
        server.should_exit = True
        thread.join(10)
        headerdeadline._timeout.cache_clear()
