"""Shared pieces of the page modules: templates, the session dependency, month and tenancy checks."""

import time
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import sqlalchemy as sa
from fastapi import Depends, HTTPException, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from collector import db, roles
from collector import schema as s
from collector.web.auth import WebSession, current
from protocol.timefmt import month_of, parse_month

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))
# A catalog id in a URL (a path segment or a query value): every reserved character escaped, the
# slash too (Jinja's urlencode keeps it). Customer ids are free text: "AT/1001", "R&D", "A+B".
templates.env.filters["seg"] = lambda v: quote(str(v), safe="")
SessionDep = Annotated[WebSession, Depends(current)]


def duration(seconds: Any) -> str:
    """Seconds as a reader takes them in: 42 s, 12 min, 5 h 3 min, 35 d 12 h ("–" for none)."""
    if seconds is None:
        return "–"
    s = int(seconds)
    sign, s = ("-" if s < 0 else ""), abs(s)  # negative: the agent's clock is ahead of the collector's
    for unit, size, sub, subsize in (("d", 86400, "h", 3600), ("h", 3600, "min", 60)):
        if s >= size:
            rest = s % size // subsize
            return f"{sign}{s // size} {unit}" + (f" {rest} {sub}" if rest else "")
    return f"{sign}{s // 60} min" if s >= 60 else f"{sign}{s} s"


templates.env.filters["duration"] = duration


def month_param(month: str | None) -> str:
    if not month:
        return month_of(int(time.time()))
    try:
        parse_month(month)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from exc
    return month


def provider_page(sess: WebSession, provider: str) -> str:
    """Provider pages show amounts: the vendor has its own view, a provider only its own pages."""
    if sess.scope.vendor:
        raise HTTPException(403, "the vendor sees the vendor view, never a provider's amounts")
    sess.require(roles.PAGES)
    return sess.scope.require_provider(provider)


def conn(request: Request) -> Any:
    return db.read_conn(request.app.state.engine)


def render(request: Request, name: str, sess: WebSession | None, **ctx: Any) -> HTMLResponse:
    if isinstance(ctx.get("provider"), str) and "provider_label" not in ctx:
        with conn(request) as c:
            ctx["provider_label"] = provider_label(c, ctx["provider"])
    return templates.TemplateResponse(request, name, {"sess": sess, **ctx})


def provider_label(c: Any, provider: str) -> str:
    """A page's name for a provider: its catalog's name beside the id ("Acme IT (acme)", kept in
    `providers` at each apply), the id alone without one."""
    name = c.execute(sa.select(s.providers.c.name).where(s.providers.c.id == provider)).scalar()
    name = str(name or "").strip()
    return f"{name} ({provider})" if name and name != provider else provider


def attachment(filename: str) -> str:
    """Content-Disposition of a download (RFC 6266): an ASCII `filename` for old clients and the
    exact name as `filename*` (RFC 8187). A customer id is free text: a name outside Latin-1 in
    the plain form made the header unencodable (a 500), and a slash, quote or semicolon in it
    would end or escape the name."""
    safe = "".join("_" if c in '/\\' else c for c in filename)
    plain = "".join(c if " " <= c <= "~" and c not in '"\\;%' else "_" for c in safe)
    return f"attachment; filename=\"{plain}\"; filename*=UTF-8''{quote(safe, safe='')}"
