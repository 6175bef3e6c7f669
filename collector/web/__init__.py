"""Web pages of the collector (MSP dashboards) and the account and entitlement routes."""

import contextlib
import os
import threading
import time
from typing import Any

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from collector.accounts import api as accounts_api
from collector.web import auth, customer, data, detail, errorpage, listing, pages, throttle, tools
from collector.web.common import HERE
from protocol.timefmt import month_of

ENV_WARM = "TR7_WEB_WARM"  # 0: no warm-up thread at start
CSP = "default-src 'self'; img-src 'self' data:; object-src 'none'; frame-ancestors 'none'; base-uri 'none'"


def register(app: FastAPI) -> None:
    """The one call in create_app: pages under /ui, static files, account and entitlement API."""
    app.state.signin_throttle = throttle.SignInThrottle(checks=os.cpu_count() or 1)
    # The pages' routers are left out of /openapi.json (include_in_schema=False): HTML for a
    # browser with a session cookie, redirects and forms, not an API a generated client calls.
    app.include_router(pages.router)
    app.include_router(customer.router)
    app.include_router(detail.router)
    app.include_router(listing.router)
    app.include_router(tools.router)
    app.include_router(accounts_api.router)
    app.mount("/ui/static", StaticFiles(directory=str(HERE / "static")), name="ui-static")

    # Starlette types a handler as taking any Exception: each of these is only given its own class
    app.add_exception_handler(auth.LoginRequired, errorpage.sign_in_first)  # type: ignore[arg-type]
    # a browser's error under /ui is a page saying what to do; everything else keeps its JSON
    app.add_exception_handler(StarletteHTTPException, errorpage.http_error)  # type: ignore[arg-type]

    app.add_middleware(_PageHeaders)

    accounts_api.install_tick(app)
    _warm_at_start(app)


_PAGE_HEADERS = {
    b"content-security-policy": CSP.encode(),
    b"x-content-type-options": b"nosniff",
    b"referrer-policy": b"same-origin",
    b"cache-control": b"no-store",
}


class _PageHeaders:
    """Security headers on /ui responses (kept when a page set its own).

    Plain ASGI rather than @app.middleware("http"): that one (BaseHTTPMiddleware) wraps every
    request, and so every 5 MB heartbeat batch, in extra tasks and memory streams for nothing.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/ui"):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in _PAGE_HEADERS.items() if k not in present]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _warm_at_start(app: FastAPI) -> None:
    """The first bill of a month takes seconds at scale: compute it before the first visitor."""
    if os.environ.get(ENV_WARM, "1") == "0":
        return
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(a: Any) -> Any:
        now = int(time.time())
        threading.Thread(
            target=_quiet_warm, args=(app.state.engine, month_of(now), now), daemon=True, name="tr7-web-warm"
        ).start()
        async with inner(a) as state:
            yield state

    app.router.lifespan_context = lifespan


def _quiet_warm(engine: Any, month: str, now: int) -> None:
    with contextlib.suppress(Exception):  # a page computes it itself if this failed
        data.warm(engine, month, now)
