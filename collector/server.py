"""The HTTP API (FastAPI): ingest, enrolment, health, log proofs; the read API is in readapi.py."""

import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import sqlalchemy as sa
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, StringConstraints
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from collector import (
    apidoc,
    credentials,
    db,
    highwater,
    ingestrequest,
    keyrotation,
    logapi,
    metrics,
    periodic,
    readapi,
    registry,
    schema,
    web,
)
from collector.gctune import tune_gc
from collector.ingestslots import ingest_in_slot
from collector.requestguard import BodyDeadline, LimitBody, RefuseNul
from collector.settings import (
    ENV_DATA_DIR,
    ENV_DB,
    ENV_LISTEN,
    ENV_ORIGIN,
    ENV_PROXIES,
    Settings,
    SetupError,
    body_min_rate,
    body_timeout,
    header_timeout,
    schema_line,
    setting,
)
from collector.web import errorpage
from protocol.heartbeat import MAX_REQUEST_BYTES, MAX_REQUEST_LINES

log = logging.getLogger(__name__)
MAX_LINES, MAX_BYTES = MAX_REQUEST_LINES, MAX_REQUEST_BYTES  # heartbeat-v1.md §4
MAX_OTHER_BODY = 1024 * 1024  # every other route: enrolment, forms, the account API
DB_RETRY_AFTER = 10  # seconds: Retry-After of a 503 while the database is unavailable


class EnrollRequest(BaseModel):
    token: Annotated[str, StringConstraints(max_length=200)]
    name: Annotated[str, StringConstraints(min_length=1, max_length=credentials.MAX_AGENT_NAME)]
    public_key: Annotated[str, StringConstraints(max_length=200)]


class LineResult(BaseModel):
    seq: int | None = None  # left out when the line has no readable seq
    status: Literal["accepted", "duplicate", "rejected"]
    reason: str | None = None


class IngestResponse(BaseModel):
    results: list[LineResult]


_JWS_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "text/plain": {
                "schema": {
                    "type": "string",
                    "description": "compact JWS heartbeats, one per line (at most 5,000, 16 MiB)",
                }
            }
        },
    }
}


class EnrollResponse(BaseModel):
    kid: str
    provider: str
    enrolled_at: str


_RESULTS = msgspec.json.Encoder()


def create_app(settings: Settings) -> FastAPI:
    engine = settings.open(migrate=False)
    # No /docs nor /redoc: FastAPI's pages load Swagger UI and ReDoc from cdn.jsdelivr.net, so a
    # third party's script would run on the collector's own origin, beside the dashboards' session
    # (and on a network without the internet they show a blank page). /openapi.json stays: any
    # OpenAPI viewer reads it offline (docs/collector.md).
    app = FastAPI(title="TR7 metering collector", version="1", docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.state.engine = engine
    # every log's size into this data directory's marks, whoever appended it (collector/highwater.py)
    # and once more at a clean stop: uvicorn's SIGTERM skips atexit (the last second of commits
    # was missing from the marks, so a backup taken then passed the restore check)
    periodic.run_every(app, highwater.WATCH_EVERY, lambda: highwater.observe(engine), "highwater",
                       at_stop=True)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        """Liveness: the process answers (the agents also read the collector's clock here)."""
        return {"status": "ok"}

    @app.get("/readyz", responses=apidoc.errors({503: "the database does not answer"}))
    def readyz() -> dict[str, str]:
        """Readiness, for a load balancer: this host reaches its database (a host cut off from it
        answered every ingest with an error while /healthz said ok)."""
        with db.read_conn(engine) as c:
            c.exec_driver_sql("SELECT 1")
        return {"status": "ok"}

    app.add_api_route("/readyz", readyz, methods=["HEAD"], include_in_schema=False)

    # HEAD too: load balancers' health checks often send it (405 marked every host down)
    app.add_api_route("/healthz", healthz, methods=["HEAD"], include_in_schema=False)

    @app.post(
        "/v1/heartbeats",
        response_model=IngestResponse,
        response_model_exclude_none=True,
        openapi_extra=_JWS_BODY,
        responses=apidoc.errors({
            400: "an empty body, a body that is not US-ASCII, or a damaged gzip stream",
            413: f"more than {MAX_LINES} lines, or a body over {MAX_BYTES} bytes sent or inflated",
            415: "a Content-Type other than text/plain (charset us-ascii or utf-8), or a Content-Encoding "
                 "other than gzip",
        }),
    )
    async def heartbeats(request: Request) -> Response:
        ingestrequest.check_content_type(request.headers.get("content-type"))
        lines = await ingestrequest.read_lines(request)
        if not lines:
            raise HTTPException(400, "no heartbeat in the body")
        if len(lines) > MAX_LINES:
            raise HTTPException(413, f"at most {MAX_LINES} heartbeats per request, got {len(lines)}")
        results = await ingest_in_slot(engine, lines)
        ingestrequest.log_ingest(request, results)
        # Rendered directly: results already have IngestResponse's shape (no None members), and
        # validating then encoding 5,000 models costs more than the HTTP layer itself. msgspec
        # writes the same compact UTF-8 JSON as Starlette's JSONResponse (json.dumps) in 0.04
        # instead of 0.52 us a line (docs/performance.md, "Twenty-fifth pass").
        return Response(_RESULTS.encode({"results": results}), media_type="application/json")

    @app.post("/v1/agents/enroll", response_model=EnrollResponse, responses=apidoc.errors({
        400: "the public key or the agent's name is refused (the token is not used up)",
        403: "the token is unknown, expired, or was used for another key",
        413: f"a body over {MAX_OTHER_BODY} bytes",
    }))
    def enroll(req: EnrollRequest) -> Any:
        try:
            return db.write_tx(
                engine, lambda c: credentials.enroll(c, req.token, req.name, req.public_key, int(time.time()))
            )
        except PermissionError as exc:
            return JSONResponse({"detail": str(exc)}, status_code=403)
        except registry.RegistryError as exc:
            raise HTTPException(400, str(exc)) from exc

    app.include_router(logapi.router)
    app.include_router(readapi.router)
    app.include_router(metrics.router)

    @app.exception_handler(keyrotation.StaleKey)
    def _stale_key(_request: Request, exc: keyrotation.StaleKey) -> JSONResponse:
        # `key rotate` ran on another host: this process still ingests (nothing it stores is
        # signed), but signs no checkpoint until the new collector.key is in its data directory
        # (read again at the next checkpoint: collector/keyrotation.py current_signer).
        log.error("event=stale_checkpoint_key %s", exc)
        return JSONResponse({"detail": str(exc)}, status_code=503)

    @app.exception_handler(DBAPIError)
    @app.exception_handler(PoolTimeout)
    def _database_down(request: Request, exc: DBAPIError | PoolTimeout) -> Response:
        # The database went away (restarted, unreachable, out of connections or disk, SQLite
        # locked past its busy timeout): a 503 the agent retries, one log line. It was a bare 500
        # and a 60-line traceback per request, ~70 a host in a 10-second PostgreSQL restart.
        # Any other database error stays what it was: a 500 with its traceback, to be fixed.
        if isinstance(exc, DBAPIError) and not db.unavailable(exc):
            raise exc
        log.error("event=database_unavailable path=%s reason=%r", request.url.path,
                  db.error_reason(exc)[:300])
        detail, headers = "the database is unavailable; retry later", {"Retry-After": str(DB_RETRY_AFTER)}
        if errorpage.wants_page(request):
            return errorpage.error_page(request, 503, detail, headers)
        return JSONResponse({"detail": detail}, status_code=503, headers=headers)

    @app.exception_handler(RequestValidationError)
    def _invalid(request: Request, exc: RequestValidationError) -> Response:
        # FastAPI's own handler echoes each bad input: a lone surrogate in it made the answer
        # unencodable (a 500), and a long one was sent back whole. Where and why is enough.
        detail = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        if errorpage.wants_page(request):  # a browser's form or link under /ui: a page
            return errorpage.error_page(request, 422, detail)
        return JSONResponse({"detail": detail}, status_code=422)

    app.add_middleware(LimitBody, limit=MAX_OTHER_BODY, exempt=frozenset({"/v1/heartbeats"}))
    app.add_middleware(RefuseNul)
    app.add_middleware(BodyDeadline, grace=body_timeout(), min_rate=body_min_rate())
    web.register(app)  # dashboards, accounts and entitlement (collector/web, collector/accounts)
    _declare_guards(app)
    return app


def _declare_guards(app: FastAPI) -> None:
    """The guards before every route answer statuses of their own (collector/requestguard.py),
    and FastAPI a 400 for a body it cannot parse: /openapi.json lists them on every API route, as
    a client generated from it must expect them. A route's own, more precise text is kept."""
    # as explicit JSON content: FastAPI reads a `model` of the app's own routes once, when the
    # route is made, and these are added after (they were published with no body at all)
    guards = apidoc.json_errors(apidoc.errors({
        400: "a NUL character in the path or query, or a body that cannot be parsed",
        408: "a request body that stalled (collector/requestguard.py BodyDeadline)",
        413: f"a body over {MAX_OTHER_BODY} bytes",
        415: "a Content-Encoding on a route other than POST /v1/heartbeats",
        503: "the database is unavailable (Retry-After says when to try again)",
    }))
    for route in apidoc.api_routes(app.routes):
        if route.include_in_schema:
            for code, doc in guards.items():
                route.responses.setdefault(code, dict(doc))


def app_from_env() -> FastAPI:
    """uvicorn factory for worker processes: settings come from the environment set by `serve`."""
    if not logging.getLogger().handlers:  # the collector's own lines (ingest, alerts) beside uvicorn's
        logging.basicConfig(level=logging.INFO, format="level=%(levelname)s logger=%(name)s %(message)s")
    app = create_app(
        Settings(Path(os.environ[ENV_DATA_DIR]), os.environ[ENV_DB], os.environ.get(ENV_ORIGIN) or None)
    )
    tune_gc()
    return app


def _check_writable(settings: Settings) -> None:
    """One real write before any worker starts: SQLite opens a file its user may not write without a
    word (and a PostgreSQL role may lack the grants), and /healthz said ok while every batch got a
    500. The row says when this database was last served."""
    def stamp(conn: Any) -> None:
        conn.execute(sa.delete(schema.meta).where(schema.meta.c.key == "served_at"))
        conn.execute(sa.insert(schema.meta).values(key="served_at", value=str(int(time.time()))))

    try:
        db.write_tx(settings.engine, stamp)
    except DBAPIError as exc:
        reason = db.error_reason(exc)
        hint = db.sqlite_hint(settings.db_url, reason)
        raise SetupError(f"cannot write the database: {reason}{hint}") from exc


def _hangup_ignored(*_: object) -> None:
    log.warning("event=sighup action=ignored hint='one worker: nothing is reloaded; restart the service to "
                "load a new version (with --workers 2 or more, SIGHUP restarts the workers)'")


def serve(settings: Settings, listen: str | None, workers: int, proxies: str | None = None) -> int:
    import uvicorn

    listen = listen or setting(ENV_LISTEN) or "127.0.0.1:8080"
    host, _, port = listen.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise SetupError(f"listen address {listen!r} (--listen or {ENV_LISTEN}) must be HOST:PORT, "
                         "e.g. 127.0.0.1:8080 or [::1]:8080")
    engine = settings.open()  # key, origin and migrations before any worker starts
    _check_writable(settings)
    from collector.accounts.api import tick_seconds
    from collector.accounts.mail import SmtpSettings

    # the environment's values, refused here in one line (and nothing said before it)
    tick_seconds(), SmtpSettings.from_env(), body_timeout(), body_min_rate(), header_timeout()
    if settings.migrated and settings.migrated[0] != settings.migrated[1]:  # said, beside uvicorn's lines
        where = engine.url.render_as_string(hide_password=True)
        print(f"tr7-collector: {schema_line(settings.migrated, where)}", file=sys.stderr, flush=True)
    os.environ[ENV_DATA_DIR] = str(settings.data_dir.resolve())
    os.environ[ENV_DB] = settings.db_url
    os.environ[ENV_ORIGIN] = settings.origin
    if workers <= 1:
        # SIGHUP's default ends the process without a word (exit 129, which systemd counts as a
        # clean stop: Restart=on-failure left the collector down), where several workers' uvicorn
        # restarts them. One worker has nothing to restart in place: said, and ignored.
        signal.signal(signal.SIGHUP, _hangup_ignored)
    uvicorn.run(
        "collector.server:app_from_env",
        factory=True,
        host=host.strip("[]") or "127.0.0.1",
        port=int(port),
        workers=max(1, workers),
        log_level="info",
        access_log=False,
        http="collector.headerdeadline:HeaderDeadline",  # uvicorn's httptools, headers timed
        # The client's address (sign-in throttling) and scheme (the cookie's Secure) come from
        # X-Forwarded-For/-Proto of these proxies only; uvicorn trusts 127.0.0.1 by default, and a
        # load balancer on another machine made every user one address (one attacker locked all
        # of them out) and https sign-ins got a cookie without Secure
        forwarded_allow_ips=proxies or setting(ENV_PROXIES) or None,
    )
    return 0
