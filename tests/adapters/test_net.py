"""adapters.net: the patient connection the vSphere login waits on, and the streamed answer."""

import gzip
import http.client
import socket
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from adapters import net


class _Gzipped(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        body = gzip.compress(self.path.encode() * 1000)
        self.send_response(200)
        self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server(serve_http: Callable[[type[BaseHTTPRequestHandler]], ThreadingHTTPServer]) -> ThreadingHTTPServer:
    return serve_http(_Gzipped)


def test_a_patient_connection_waits_long_for_answers_with_keepalive(server: ThreadingHTTPServer) -> None:
    scheme = net.patient(http.client.HTTPConnection, 1800.0)
    conn = scheme("127.0.0.1", server.server_address[1], timeout=2)
    assert isinstance(conn, http.client.HTTPConnection) and conn.timeout == 2  # the connect's bound
    conn.connect()
    try:
        assert conn.sock.gettimeout() == 1800.0
        assert conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
        if hasattr(socket, "TCP_KEEPIDLE"):
            assert conn.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 30
        conn.request("GET", "/a")
        assert b"".join(net.arriving(conn.getresponse())) == b"/a" * 1000
        conn.request("GET", "/b")  # the same connection: the first answer was read to its end
        assert b"".join(net.arriving(conn.getresponse())) == b"/b" * 1000
    finally:
        conn.close()
