"""Web pages of the collector (MSP dashboards) and the account and entitlement routes."""

import contextlib
import os
import threading
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from collector.accounts import api as accounts_api
from collector.web import auth, data, detail, pages, tools
from collector.web.common import HERE
from protocol.timefmt import month_of

ENV_WARM = "TR7_WEB_WARM"  # 0: no warm-up thread at start
CSP = "default-src 'self'; img-src 'self' data:; object-src 'none'; frame-ancestors 'none'; base-uri 'none'"


def register(app: FastAPI) -> None:
    """The one call in create_app: pages under /ui, static files, account and entitlement API."""
    app.include_router(pages.router)
    app.include_router(detail.router)
    app.include_router(tools.router)
    app.include_router(accounts_api.router)
    app.mount("/ui/static", StaticFiles(directory=str(HERE / "static")), name="ui-static")

    @app.exception_handler(auth.LoginRequired)
    def _login(request: Request, _exc: auth.LoginRequired) -> Response:
        return RedirectResponse("/ui/login", status_code=303)

    @app.middleware("http")
    async def _headers(request: Request, call_next):  # type: ignore[no-untyped-def]
        resp = await call_next(request)
        if request.url.path.startswith("/ui"):
            resp.headers.setdefault("Content-Security-Policy", CSP)
            resp.headers.setdefault("X-Content-Type-Options", "nosniff")
            resp.headers.setdefault("Referrer-Policy", "same-origin")
            resp.headers.setdefault("Cache-Control", "no-store")
        return resp

    accounts_api.install_tick(app)
    _warm_at_start(app)


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
