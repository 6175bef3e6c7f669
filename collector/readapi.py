"""Read API with bearer tokens; tenancy is decided here only: `resolve_scope` + `Scope.provider_filter`.

A provider token (admin, viewer, auditor) sees its own provider; the vendor token sees every
provider's hours, licenses and agents but never a price or an amount.
"""

import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends, HTTPException, Request
from sqlalchemy.engine import Connection

from collector import accounting, alerts, db, registry
from collector import schema as s
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

    def require_money(self) -> None:
        if self.vendor:
            raise HTTPException(403, "the vendor token never sees prices or amounts")


def resolve_scope(request: Request) -> Scope:
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HTTPException(401, "bearer token required", headers={"WWW-Authenticate": "Bearer"})
    with db.read_conn(request.app.state.engine) as c:
        row = c.execute(
            sa.select(s.api_tokens).where(s.api_tokens.c.digest == registry.digest(token.strip()))
        ).first()
    if row is None:
        raise HTTPException(401, "unknown token", headers={"WWW-Authenticate": "Bearer"})
    return Scope(row.provider, row.role)


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


def _conn(request: Request) -> Any:
    return db.read_conn(request.app.state.engine)


def _catalog(c: Connection, provider: str) -> dict[str, Any]:
    latest = registry.latest_catalog(c, provider)
    if latest is None:
        raise HTTPException(404, f"no catalog for provider {provider}")
    return latest[1]


@router.get("/providers")
def providers(request: Request, scope: ScopeDep) -> list[dict[str, Any]]:
    with _conn(request) as c:
        rows = c.execute(
            sa.select(s.providers).where(scope.provider_filter(s.providers.c.id)).order_by(s.providers.c.id)
        )
        return [{"id": r.id, "name": r.name, "currency": r.currency} for r in rows]


@router.get("/providers/{provider}/customers")
def customers(provider: str, request: Request, scope: ScopeDep) -> list[dict[str, Any]]:
    with _conn(request) as c:
        return list(_catalog(c, scope.require_provider(provider)).get("customers", []))


@router.get("/providers/{provider}/licenses")
def licenses(provider: str, request: Request, scope: ScopeDep) -> list[dict[str, Any]]:
    with _conn(request) as c:
        return strip_money(list(_catalog(c, scope.require_provider(provider)).get("licenses", [])))


@router.get("/providers/{provider}/instances")
def instances(provider: str, request: Request, scope: ScopeDep, month: str | None = None) -> dict[str, Any]:
    """Per instance, active and seen hours per UTC day of the month (from the hour aggregates)."""
    month = _month(month)
    m0, m1 = month_bounds(month)
    d = s.days.c
    per: dict[str, dict[str, dict[str, int]]] = defaultdict(dict)
    with _conn(request) as c:
        q = sa.select(d.instance, d.day, d.active, d.seen).where(
            d.provider == scope.require_provider(provider), d.day >= m0, d.day < m1
        )
        merged: dict[tuple[str, int], list[int]] = defaultdict(lambda: [0, 0])
        for r in c.execute(q):
            m = merged[(r.instance, r.day)]
            m[0] |= r.active
            m[1] |= r.seen
    for (inst, day), (a, n) in sorted(merged.items()):
        per[inst][format_time(day)[:10]] = {"active_hours": a.bit_count(), "seen_hours": n.bit_count()}
    return {
        "provider": provider,
        "month": month,
        "instances": [{"instance": i, "days": days} for i, days in sorted(per.items())],
    }


@router.get("/providers/{provider}/agents")
def agents(provider: str, request: Request, scope: ScopeDep, month: str | None = None) -> dict[str, Any]:
    month = _month(month)
    with _conn(request) as c:
        return {
            "provider": provider,
            "month": month,
            "agents": alerts.agent_health(c, scope.require_provider(provider), month, int(time.time())),
        }


@router.get("/providers/{provider}/alerts")
def alert_list(provider: str, request: Request, scope: ScopeDep, month: str | None = None) -> dict[str, Any]:
    month = _month(month)
    with _conn(request) as c:
        found = alerts.alerts(c, scope.require_provider(provider), month, int(time.time()))
    return {"provider": provider, "month": month, "alerts": found}


@router.get("/providers/{provider}/invoices")
def invoice_months(provider: str, request: Request, scope: ScopeDep) -> list[dict[str, Any]]:
    """Months with evidence or a close, newest first, with whether each is closed."""
    scope.require_money()
    p = scope.require_provider(provider)
    with _conn(request) as c:
        logged = set(c.execute(sa.select(s.logs.c.month).where(s.logs.c.provider == p)).scalars())
        done = set(c.execute(sa.select(s.closes.c.month).where(s.closes.c.provider == p)).scalars())
    return [{"month": m, "closed": m in done} for m in sorted(logged | done, reverse=True)]


@router.get("/providers/{provider}/invoices/{month}")
def invoice(provider: str, month: str, request: Request, scope: ScopeDep) -> dict[str, Any]:
    scope.require_money()
    month = _month(month)
    with _conn(request) as c:
        try:
            return accounting.invoice(c, scope.require_provider(provider), month)
        except accounting.AccountingError as exc:
            raise HTTPException(404, str(exc)) from exc
