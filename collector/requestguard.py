"""Guards before any route: no NUL in a path or query (400), no oversized body (413), no body
that stalls (408), no compressed body where only the heartbeat route inflates one (415)."""

import asyncio
import logging

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)


class RefuseNul:
    """PostgreSQL's text cannot hold U+0000, so a provider, customer or instance id with one in a
    path (`/v1/log/%00/...`) or query made psycopg raise in whichever route looked it up: a 500.
    No id of the collector holds one (ids are refused with control characters), so it is a 400.

    Plain ASGI, as collector/web's headers (BaseHTTPMiddleware would wrap every heartbeat batch)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and ("\x00" in scope["path"] or _nul_in_query(scope["query_string"])):
            response = JSONResponse({"detail": "a NUL character in the request path or query"}, 400)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _nul_in_query(query: bytes) -> bool:
    return b"\x00" in query or b"%00" in query


class _TooLarge(HTTPException):
    """An HTTPException so that FastAPI's body parsing passes it on (it turns any other error of
    reading the body into a 400) and the app's exception middleware answers it."""


class LimitBody:
    """At most ``limit`` bytes of request body on every route but those exempt (the heartbeat
    route reads its own 16 MiB as it streams): enrolment and the login form are open to anyone,
    and FastAPI reads a JSON or form body whole before a model can refuse it (a 50 MB agent name
    was stored). A declared Content-Length is judged first; a chunked body as it arrives."""

    def __init__(self, app: ASGIApp, limit: int, exempt: frozenset[str]) -> None:
        self.app, self.limit, self.exempt = app, limit, exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        encoding = headers.get(b"content-encoding", b"identity").strip().lower()
        has_body = headers.get(b"content-length", b"0").strip() != b"0" or b"transfer-encoding" in headers
        if has_body and encoding not in (b"", b"identity"):
            # The JSON and form routes read the bytes as sent: a gzip body was parsed as garbage
            # (422) or, where a route reads no body, silently ignored.
            shown = encoding.decode("latin-1")
            await JSONResponse({"detail": f"unsupported Content-Encoding {shown!r}: only the heartbeat "
                                "route takes a compressed body"}, 415)(scope, receive, send)
            return
        too_large = JSONResponse({"detail": f"request body larger than {self.limit} bytes"}, 413)
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await too_large(scope, receive, send)
            return
        seen, started = 0, False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge(413, f"request body larger than {self.limit} bytes")
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except _TooLarge:
            if started:
                raise
            await too_large(scope, receive, send)


class BodyDeadline:
    """A request body must keep arriving: at most ``grace`` seconds without a byte, and by
    ``grace`` + received / ``min_rate`` seconds after the route first asks for it (Apache's
    mod_reqtimeout rule, `body=60,MinRate=1000`; a rate of 0: no average asked). Else 408 and the
    connection closed. uvicorn has no such bound: a client sending a byte a minute held a
    connection, its task and its buffered lines for as long as it liked, and a few hundred of them
    held the workers' memory. Nothing is timed once the body has ended (Starlette waits on
    ``receive`` for a disconnect then)."""

    def __init__(self, app: ASGIApp, grace: float, min_rate: int) -> None:
        self.app, self.grace, self.min_rate = app, grace, min_rate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        start: float | None = None
        got, ended = 0, False

        async def timed() -> Message:
            nonlocal got, ended, start
            if ended:
                return await receive()
            now = loop.time()
            start = now if start is None else start
            wait = self.grace
            if self.min_rate:
                wait = min(wait, start + self.grace + got / self.min_rate - now)
            try:
                async with asyncio.timeout(max(wait, 0.0)):
                    message = await receive()
            except TimeoutError:
                client = scope.get("client")
                log.warning("event=body_timeout peer=%s path=%s received=%d seconds=%.0f",
                            client[0] if client else "-", scope["path"], got, loop.time() - start)
                # An HTTPException: FastAPI's body parsing passes it on (any other error of reading
                # the body becomes a 400) and its exception middleware answers it with this header,
                # which makes uvicorn close the connection (the rest of the body is never read).
                why = (f"the request body stalled: {got} bytes in {loop.time() - start:.0f} s (at most "
                       f"{self.grace:g} s without a byte, then {self.min_rate} bytes a second on average)")
                raise HTTPException(408, why, headers={"Connection": "close"}) from None
            if message["type"] == "http.request":
                got += len(message.get("body", b""))
                ended = not message.get("more_body", False)
            else:
                ended = True
            return message

        await self.app(scope, timed, send)
