"""Refuse a request whose path or query holds a NUL before any route reads it (400, not a 500)."""

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send


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
