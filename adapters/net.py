"""Transport for adapters that speak HTTP themselves: TLS settings, connections, their errors."""

import http.client
import socket
import ssl
import zlib
from collections.abc import Iterator
from typing import TypeVar, cast
from urllib.parse import urlsplit

from adapters.base import AdapterError, ConfigError, UnreachableError

C = TypeVar("C", bound=http.client.HTTPConnection)

# Probes that end a patient wait on a dead path (a firewall's state lost, the host powered off) in
# about a minute: the peer's kernel answers them while the server itself is only slow to answer.
KEEPALIVE = (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3))


def ssl_context(url: str, verify_tls: bool, ca_file: str | None) -> ssl.SSLContext | None:
    """The TLS context for ``url``: None for http://, the system store or ``ca_file``, or unverified."""
    if urlsplit(url).scheme == "http":
        return None
    if not verify_tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    try:
        return ssl.create_default_context(cafile=ca_file)
    except OSError as exc:
        raise ConfigError(f"cannot read ca_file {ca_file}: {exc.strerror}") from exc


def connection(url: str, timeout: float, context: ssl.SSLContext | None) -> http.client.HTTPConnection:
    """An unopened connection to the host of ``url`` (https:// with ``context``)."""
    parts = urlsplit(url)
    if parts.scheme == "https":
        return http.client.HTTPSConnection(parts.netloc, timeout=timeout, context=context)
    return http.client.HTTPConnection(parts.netloc, timeout=timeout)


def arriving(resp: http.client.HTTPResponse) -> Iterator[bytes]:
    """The body of ``resp`` as it arrives (read() waits for all it asks for), gunzipped if it is;
    read to its end after the last piece, which leaves the connection ready for the next request."""
    gunzip = zlib.decompressobj(wbits=31) if resp.getheader("Content-Encoding") == "gzip" else None
    while chunk := resp.read1(1 << 16):
        yield gunzip.decompress(chunk) if gunzip else chunk
    resp.read()  # read1 leaves a Content-Length answer open at its end


def patient(scheme: type[C], wait: float) -> type[C]:
    """``scheme`` (an http.client connection class) whose connect keeps the ``timeout`` it is given,
    but whose reads then wait up to ``wait`` seconds, with keepalive probes on the socket: for an
    answer worth waiting for after its caller gave up (it names something the server made)."""

    def connect(self: C) -> None:
        scheme.connect(self)  # bounded by `timeout`: nothing has reached the server yet
        self.sock.settimeout(wait)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in KEEPALIVE:
            if hasattr(socket, name):  # not every platform tunes them
                self.sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)

    return cast(type[C], type(f"Patient{scheme.__name__}", (scheme,), {"connect": connect}))


def unreachable(exc: BaseException, where: str, tls_hint: str) -> AdapterError | None:
    """A transport failure of the standard library (TLS, timeout, socket, HTTP) as UnreachableError;
    None for any other exception. ``tls_hint``: what to set when the certificate is not trusted."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return UnreachableError("TLS certificate not trusted", f"{where}: {exc.verify_message}; {tls_hint}")
    if isinstance(exc, TimeoutError):
        return UnreachableError("timeout", f"{where}: no answer within the timeout")
    if isinstance(exc, OSError | http.client.HTTPException):
        return UnreachableError("unreachable", f"{where}: {type(exc).__name__}: {exc}")
    return None
