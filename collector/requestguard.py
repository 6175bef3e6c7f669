"""Guards before any route: no NUL in a path or query (400), no oversized body (413)."""

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send


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
        too_large = JSONResponse({"detail": f"request body larger than {self.limit} bytes"}, 413)
        declared = dict(scope["headers"]).get(b"content-length", b"")
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
