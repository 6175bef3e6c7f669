"""uvicorn's httptools protocol with a deadline on a request's headers (408, connection closed)."""

import asyncio
import functools
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from collector.settings import header_timeout

log = logging.getLogger("collector.requestguard")  # beside event=body_timeout

_WHY = b'{"detail":"the request headers did not end in time"}'  # JSON, as every error (/openapi.json)
_ANSWER = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
           b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(_WHY), _WHY))


class HeaderDeadline(HttpToolsProtocol):
    """uvicorn times nothing before a request's headers have ended: its keep-alive timer starts
    after a response and stops at the next byte, so a connection that never finishes its headers
    (`X-A: ` and then silence, or a byte every few seconds) stayed open for good, and a few
    thousand of them ran a worker out of file descriptors (a review, with 3,000 connections).
    Here a request's headers must end within TR7_COLLECTOR_HEADER_TIMEOUT seconds of its first
    byte, or of the connection for its first request: a fixed total, not a time between bytes, so
    trickling does not stretch it (Apache mod_reqtimeout's `header=20`). The body has its own
    bound (collector/requestguard.py BodyDeadline)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timeout = _timeout()
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)  # uvicorn's own override is typed so as well
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._header_timer is None:  # a later request on a kept-alive connection
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._header_timer = self.loop.call_later(self._header_timeout, self._expired)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _expired(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self.pipeline or (self.cycle is not None and not self.cycle.response_complete):
            # Answers still owed to earlier requests (pipelined, or one being served): a 408 first
            # on the wire would read as the answer to the first of them. Timed again from now.
            self._arm()
            return
        peer = self.client[0] if self.client else "-"
        log.warning("event=header_timeout peer=%s seconds=%g", peer, self._header_timeout)
        self.transport.write(_ANSWER)
        self.transport.close()


@functools.cache
def _timeout() -> float:
    """Read once a process (serve checked it before any worker started): a connection read the
    environment file in the event loop, and an edit to a refused value failed every connection."""
    return header_timeout()
