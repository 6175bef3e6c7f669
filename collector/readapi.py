"""Read API with bearer tokens; tenancy and roles are decided here: `resolve_scope`, `Scope.provider_filter`.

A provider token (admin, viewer, auditor) sees its own provider; the vendor token sees every
provider's hours, licenses and agents but never a price or an amount. What each role may call is
the table of collector/roles.py, checked in `resolve_scope` for every route that takes a token.
"""

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from operator import itemgetter
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.types import DecoratedCallable
from sqlalchemy.engine import Connection
from starlette.routing import compile_path

from billing import PricingError
from collector import accounting, alerts, db, evidence, readmodels, registry, resultcache, roles
from collector import schema as s
from collector.accounts.store import overlay
from collector.paging import After, Limit, page
from protocol.timefmt import format_time, month_bounds, month_of, parse_month

router = APIRouter(prefix="/v1")
MONEY = frozenset({"price", "amount", "totals", "total", "rates"})


@dataclass(frozen=True)
class Scope:
    provider: str | None  # None: the vendor
    role: str

    @property
    def vendor(self) -> bool:
        return self.provider is None

    def require_provider(self, provider: str) -> str:
        """The one check every provider-scoped route goes through."""
        if self.provider is not None and self.provider != provider:
            raise HTTPException(403, "this token is not for that provider")
        return provider

    def provider_filter(self, column: Any) -> Any:
        """The one query filter for lists across providers."""
        return sa.true() if self.provider is None else column == self.provider

    def require(self, permission: str) -> None:
        if not roles.allows(self.role, permission):
            raise HTTPException(403, roles.denial(permission))


# Declared as a security scheme, so OpenAPI marks every route that takes a token (and the table's
# test lists them from there).
BEARER = HTTPBearer(auto_error=False, description="an API token of `tr7-collector token add`")
# Templates as OpenAPI writes them; a customer id is free text and may hold a slash ("AT/1001",
# sent as %2F), so its routes take the rest of the path as the id, as the routers declare it.
_ROUTES = [
    (m, compile_path(path.replace("{customer}", "{customer:path}"))[0], path, perm)
    for (m, path), perm in roles.API_ROUTES.items()
]


def route_permission(method: str, path: str) -> tuple[str, str | None]:
    """(template, permission) of a request path; matched here rather than read from the router,
    so routes of any module and router count alike."""
    for m, regex, template, permission in _ROUTES:
        if m == method and regex.match(path):
            return template, permission
    return path, None


def resolve_scope(
    request: Request, bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]
) -> Scope:
    if bearer is None:
        raise HTTPException(401, "bearer token required", headers={"WWW-Authenticate": "Bearer"})
    with db.read_conn(request.app.state.engine) as c:
        row = c.execute(
            sa.select(s.api_tokens).where(s.api_tokens.c.digest == registry.digest(bearer.credentials))
        ).first()
    if row is None:
        raise HTTPException(401, "unknown token", headers={"WWW-Authenticate": "Bearer"})
    scope = Scope(row.provider, row.role)
    template, permission = route_permission(request.method, request.url.path)
    if permission is None:  # fail closed: a new route is nobody's until it has a row
        raise HTTPException(403, f"no role may use {request.method} {template} (not in collector/roles.py)")
    scope.require(permission)
    return scope


ScopeDep = Annotated[Scope, Depends(resolve_scope)]


def strip_money(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: strip_money(v) for k, v in obj.items() if k not in MONEY}
    if isinstance(obj, list):
        return [strip_money(v) for v in obj]
    return obj


def _month(month: str | None) -> str:
    if month is None:
        return month_of(int(time.time()))
    try:
        parse_month(month)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from exc
    return month


def _get(path: str) -> Callable[[DecoratedCallable], DecoratedCallable]:
    """A read route: its 200 body is plain JSON, documented by collector/readmodels.py's model."""
    return router.get(path, response_model=None, responses=readmodels.documented(path))


def _conn(request: Request) -> Any:
    return db.read_conn(request.app.state.engine)


def _catalog(c: Connection, provider: str) -> dict[str, Any]:
    latest = registry.latest_catalog(c, provider)
    if latest is None:
        raise HTTPException(404, f"no catalog for provider {provider}")
    return latest[1]


@_get("/providers")
def providers(request: Request, scope: ScopeDep) -> list[dict[str, Any]]:
    with _conn(request) as c:
        rows = c.execute(
            sa.select(s.providers).where(scope.provider_filter(s.providers.c.id)).order_by(s.providers.c.id)
        )
        return [{"id": r.id, "name": r.name, "currency": r.currency} for r in rows]


def known_provider(c: Any, scope: "Scope", provider: str) -> str:
    """The provider, readable by the token and known to the collector: an unknown one is a 404
    on every route (some answered 200 with empty lists, which an integrator reads as "no data")."""
    p = scope.require_provider(provider)
    if c.execute(sa.select(s.providers.c.id).where(s.providers.c.id == p)).first() is None:
        raise HTTPException(404, f"no provider {provider!r}")
    return p


@_get("/providers/{provider}/customers")
def customers(provider: str, request: Request, scope: ScopeDep) -> list[dict[str, Any]]:
    with _conn(request) as c:
        p = scope.require_provider(provider)
        # With the downgraded periods the accounts recorded, as billing applies them (§8)
        found = list(overlay(c, p, _catalog(c, p)).get("customers", []))
    # Downgraded periods are the provider's dealings with its customer (payment state), which the
    # vendor never sees (collector/roles.py ACCOUNTS)
    return [{k: v for k, v in x.items() if k != "downgraded"} for x in found] if scope.vendor else found


@_get("/providers/{provider}/licenses")
def licenses(provider: str, request: Request, scope: ScopeDep) -> list[dict[str, Any]]:
    with _conn(request) as c:
        shown: list[dict[str, Any]] = strip_money(
            list(_catalog(c, scope.require_provider(provider)).get("licenses", [])))
        return shown


@_get("/providers/{provider}/instances")
def instances(
    provider: str, request: Request, scope: ScopeDep, month: str | None = None, limit: Limit = None,
    after: After = None,
) -> dict[str, Any]:
    """Per instance, active and seen hours per UTC day of the month (from the hour aggregates,
    without the hours only quarantined heartbeats gave, as billing counts them), by instance id."""
    month = _month(month)
    m0, m1 = month_bounds(month)
    with _conn(request) as c:
        p = known_provider(c, scope, provider)
        active, seen = evidence.billed_bits(c, p, month, accounting.quarantined(c, p, month))
    # Listed: the instances seen in one of the month's hours; the page is cut before the days of
    # each are counted, so a page of 100 of 2,000 instances counts 100.
    in_month = (1 << (m1 - m0) // 3600) - 1
    listed, next_after = page(sorted(i for i, bits in seen.items() if bits & in_month), str, limit, after)
    found = []
    for inst in listed:
        days = {}
        for day in range(m0, m1, 86400):
            k = (day - m0) // 3600
            a, n = active[inst] >> k & 0xFFFFFF, seen[inst] >> k & 0xFFFFFF
            if n:
                days[format_time(day)[:10]] = {"active_hours": a.bit_count(), "seen_hours": n.bit_count()}
        found.append({"instance": inst, "days": days})
    return {"provider": provider, "month": month, "instances": found, "next_after": next_after}


_KID = itemgetter("kid")


@_get("/providers/{provider}/agents")
def agents(
    provider: str, request: Request, scope: ScopeDep, month: str | None = None, limit: Limit = None,
    after: After = None,
) -> dict[str, Any]:
    """The month's agent keys with their health, by kid."""
    month = _month(month)
    with _conn(request) as c:
        found = resultcache.health(c, known_provider(c, scope, provider), month, int(time.time()))
    # sorted here, as bisect compares: the database's collation need not order as Python does
    listed, next_after = page(sorted(found, key=_KID), _KID, limit, after)
    return {"provider": provider, "month": month, "agents": listed, "next_after": next_after}


# Members that change while an alert stays the same alert: a silent agent's last heartbeat, a run
# of cloned or unlicensed hours growing, more seqs over a month's boundary, an agent's name, a
# pricing error's wording. They are left out of the paging key, so an alert keeps its place in a
# walk of pages while it changes (keyed by its content, it could appear on two pages or on none).
VOLATILE = frozenset({"last_heartbeat", "hours", "until", "seqs", "name", "detail"})


def alert_key(alert: dict[str, Any]) -> str:
    """An alert's paging key: its type, then the SHA-256 of its canonical JSON without the
    VOLATILE members. Alerts have no id of their own, and their members differ by type; a hash
    bounds the key (an instance id is free text) and needs no rule per type, so a new kind of
    alert pages without one (its changing members belong in VOLATILE). What is left names the
    alert: (agent, seq) of a fork, the agent of a silence, (instance, first hour, vms) of a clone."""
    stable = {k: v for k, v in alert.items() if k not in VOLATILE}
    body = json.dumps(stable, sort_keys=True, separators=(",", ":"), default=str).encode()
    return f"{alert['type']}:{hashlib.sha256(body).hexdigest()}"


@_get("/providers/{provider}/alerts")
def alert_list(
    provider: str, request: Request, scope: ScopeDep, month: str | None = None, limit: Limit = None,
    after: After = None,
) -> dict[str, Any]:
    month, now = _month(month), int(time.time())
    with _conn(request) as c:
        found = alerts.for_role(resultcache.alerts_of(c, known_provider(c, scope, provider), month, now),
                                scope.role)
    next_after = None
    if limit is not None or after is not None:  # without either: the whole list in its own order
        found, next_after = page(sorted(found, key=alert_key), alert_key, limit, after)
    return {"provider": provider, "month": month, "alerts": found, "next_after": next_after}


@_get("/providers/{provider}/invoices")
def invoice_months(provider: str, request: Request, scope: ScopeDep) -> list[dict[str, Any]]:
    """Months with evidence or a close, newest first, with whether each is closed."""
    with _conn(request) as c:
        p = known_provider(c, scope, provider)
        # size > 0: a close makes an empty log row for the month before it (its anchors' lock)
        q = sa.select(s.logs.c.month).where(s.logs.c.provider == p, s.logs.c.size > 0)
        logged = set(c.execute(q).scalars())
        done = set(c.execute(sa.select(s.closes.c.month).where(s.closes.c.provider == p)).scalars())
    # Late data of a closed month is billed on the first open month after it (billing-v1.md §6),
    # which may hold no heartbeat of its own: its invoice exists all the same (up to this month).
    current = month_of(int(time.time()))
    landing = {accounting.first_open_after(m, done) for m in done}
    months = logged | done | {m for m in landing if m <= current}
    return [{"month": m, "closed": m in done} for m in sorted(months, reverse=True)]


@_get("/providers/{provider}/invoices/{month}")
def invoice(provider: str, month: str, request: Request, scope: ScopeDep) -> dict[str, Any]:
    month = _month(month)
    with _conn(request) as c:
        try:
            return accounting.invoice(c, scope.require_provider(provider), month)
        except accounting.AccountingError as exc:
            raise HTTPException(404, str(exc)) from exc
        except PricingError as exc:  # the catalog cannot price the month: no invoice, not a wrong one
            raise HTTPException(409, str(exc)) from exc
