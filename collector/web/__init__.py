"""Web pages of the collector (MSP dashboards) and the account and entitlement routes."""

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from collector.accounts import api as accounts_api
from collector.web import auth, detail, pages, tools
from collector.web.common import HERE

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
