"""Planner (PAYG vs fixed term), auditor view (checkpoints, bundles, verification), vendor view."""

import contextlib
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from decimal import ROUND_CEILING, Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import FileResponse, Response
from starlette.background import BackgroundTask

from audit.archive import pack
from collector import accounting, db, keyrotation, roles, tlog
from collector import schema as s
from collector.export import export
from collector.prune import listing
from collector.readapi import strip_money
from collector.web import auth, data
from collector.web.common import SessionDep, attachment, conn, month_param, provider_page
from collector.web.common import render as page

router = APIRouter(prefix="/ui", include_in_schema=False)  # pages: not in /openapi.json


def _money(text: str | None) -> Decimal | None:
    if not text:
        return None
    try:
        v = Decimal(text.strip())
    except InvalidOperation as exc:
        raise HTTPException(
            400, f"the fixed price {text!r} is not an amount (write it with a dot: 20.50)") from exc
    if not v.is_finite() or v <= 0:  # 0 read as "fixed is cheaper" at a break-even of 0 hours
        raise HTTPException(400, "the fixed price is a positive amount")
    # 1e999999999 is finite, but dividing by a price overflowed the context: a 500 (the exponent of
    # a finite Decimal is an int, never the 'n', 'N' or 'F' typeshed allows for)
    if v.adjusted() > 15 or v.as_tuple().exponent < -6:  # type: ignore[operator]
        raise HTTPException(400, "the fixed price is an amount below 10^16 with at most 6 decimals")
    return v


def plan(
    usage: dict[str, Any], invoice: dict[str, Any], customer: str, fixed: Decimal | None
) -> list[dict[str, Any]]:
    """Per hourly PAYG license: metered hours, PAYG cost, and the fixed-term comparison."""
    out = []
    for row in (r for r in usage["rows"] if r["customer"] == customer):
        lines = [x for x in invoice["lines"] if x["license"] == row["license"] and not x.get("adjusts")]
        if not lines:
            continue
        cost = sum((Decimal(x["amount"]) for x in lines), Decimal("0"))
        prices = sorted({Decimal(x["price"]) for x in lines})
        price = prices[-1]  # the dearest capacity of the month
        item: dict[str, Any] = {
            "license": row["license"],
            "instance": row["instance"],
            # the invoiced hours, as the cost is: a closed month's usage also counts late hours,
            # billed on the next month (720 h next to the cost of 710 read as 0.044 an hour)
            "hours": sum(int(x["quantity"]) for x in lines),
            # every price the month billed at: one figure beside the cost of two read as wrong
            "price": str(price) if len(prices) == 1 else f"{prices[0]}–{price}",
            "payg": str(cost),
        }
        if fixed is not None:
            cents = fixed.quantize(Decimal("0.01"))
            item["fixed"] = str(cents if cents == fixed else fixed)
            item["break_even"] = int((fixed / price).to_integral_value(ROUND_CEILING)) if price else None
            item["cheaper"] = "fixed" if fixed < cost else "payg"
        out.append(item)
    return out


@router.get("/p/{provider}/planner/{customer:path}")
def planner(
    provider: str,
    customer: str,
    request: Request,
    sess: SessionDep,
    month: str | None = None,
    fixed_price: str | None = None,
) -> Response:
    provider_page(sess, provider)
    sess.require(roles.PLANNER)
    month = month_param(month)
    fixed = _money(fixed_price)
    with conn(request) as c:
        names = accounting.customer_names(data.month_catalog(c, provider, month), data.catalog(c, provider))
        res = data.results(c, provider, month)
        stale = data.results_stale(c, provider, month)
    if res is None or (customer not in names and customer not in res[1]["totals"]):
        raise HTTPException(404, f"no customer {customer}")
    items = plan(res[0], res[1], customer, fixed)
    return page(
        request,
        "planner.html",
        sess,
        provider=provider,
        customer=customer,
        month=month,
        items=items,
        stale=stale,
        fixed_price=fixed_price or "",
        currency=res[1]["currency"],
    )


@router.get("/p/{provider}/audit")
def audit_page(provider: str, request: Request, sess: SessionDep) -> Response:
    provider_page(sess, provider)
    sess.require(roles.AUDIT)
    with conn(request) as c:
        logs = c.execute(
            sa.select(s.logs)
            .where(s.logs.c.provider == provider, s.logs.c.size > 0)  # close makes an empty month before
            .order_by(s.logs.c.month.desc())
        ).all()
        cps = c.execute(
            sa.select(
                s.checkpoints.c.month, s.checkpoints.c.size, s.checkpoints.c.note, s.checkpoints.c.created_at
            )
            .where(s.checkpoints.c.provider == provider)
            .order_by(s.checkpoints.c.size)
        ).all()
        closed = dict(
            c.execute(
                sa.select(s.closes.c.month, s.closes.c.size).where(s.closes.c.provider == provider)
            ).all()
        )
        pruned = {x["month"]: x for x in listing(c, provider)}
        retired, key = keyrotation.history(c), keyrotation.current_key(c)
    months = []
    for lg in logs:
        mine = [x for x in cps if x.month == lg.month]
        months.append(
            {
                "month": lg.month,
                "size": lg.size,
                "closed_at_size": closed.get(lg.month),
                "checkpoints": [{"size": x.size, "note": x.note} for x in mine],
                "pruned": pruned.get(lg.month),  # `tr7-collector prune` archived its bundle
            }
        )
    # The key to pin (tr7-audit verify --collector-key), the database's, and the hand-overs to it.
    return page(request, "audit.html", sess, provider=provider, months=months, key=key,
                retired=retired[::-1])


def _bundle(request: Request, provider: str, month: str, tmp: Path) -> tuple[Path, bool]:
    settings = request.app.state.settings
    # One read snapshot (db.read_conn), as `tr7-collector export`: a write transaction was READ
    # COMMITTED on PostgreSQL (statements saw ingest's commits midway) and held SQLite's lock.
    with db.read_conn(request.app.state.engine) as c:
        try:
            return export(c, settings, provider, month, tmp / "bundle")
        except tlog.EvidencePruned as exc:  # `tr7-collector prune` archived it: gone from here
            raise HTTPException(410, str(exc)) from exc


EXPORT_SLOTS = 2  # bundles made at once by a serving process, at most one per provider
_exporting: set[str] = set()  # providers whose bundle is being made
_exporting_lock = threading.Lock()


@contextlib.contextmanager
def _one_export(provider: str) -> Iterator[None]:
    """Few bundles at a time in a serving process: a big month's takes minutes of a core (and
    ingest shares the process); another request is told to come back, not queued. One per
    provider, so that one tenant's auditor, however many months it asks for, leaves a slot to
    the other tenants (with one slot for all, it could keep every other tenant at 429)."""
    with _exporting_lock:
        if provider in _exporting:
            why = "an audit bundle of this provider is being made: try again when it is done"
        elif len(_exporting) >= EXPORT_SLOTS:
            why = "this collector process is making other audit bundles: try again in a minute"
        else:
            why = ""
            _exporting.add(provider)
    if why:
        raise HTTPException(429, f"{why} (or run `tr7-collector export`)", headers={"Retry-After": "60"})
    try:
        yield
    finally:
        with _exporting_lock:
            _exporting.discard(provider)


@router.get("/p/{provider}/audit/{month}/bundle.tar.gz")
def bundle(provider: str, month: str, request: Request, sess: SessionDep) -> Response:
    provider_page(sess, provider)
    sess.require(roles.AUDIT)
    month = month_param(month)
    # Written to disk and sent from there (removed once sent): built in memory, the archive and
    # the bundle it came from held a big month's gigabytes in the server.
    tmp = Path(tempfile.mkdtemp(prefix="tr7-bundle-"))
    try:
        with _one_export(provider):
            path, _agrees = _bundle(request, provider, month, tmp)
            # The same archive as `export --compress` (reproducible, read back before it is sent)
            archive = pack(path, tmp / "bundle.tar.gz", top=f"{provider}-{month}")
            shutil.rmtree(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    name = f"audit-{provider}-{month}.tar.gz"
    return FileResponse(
        archive,
        media_type="application/gzip",
        headers={"Content-Disposition": attachment(name)},  # a provider id may be any script
        background=BackgroundTask(shutil.rmtree, tmp, ignore_errors=True),
    )


@router.post("/p/{provider}/audit/{month}/verify")
def verify(provider: str, month: str, request: Request, sess: SessionDep, csrf: str = Form("")) -> Response:
    """Export the month's bundle and run the auditor's verifier on it, as a third party would."""
    auth.check_csrf(sess.csrf, csrf)
    provider_page(sess, provider)
    sess.require(roles.AUDIT)
    month = month_param(month)
    from audit.verify import verify_bundle

    with _one_export(provider), tempfile.TemporaryDirectory() as tmp:
        path, agrees = _bundle(request, provider, month, Path(tmp))
        report = verify_bundle(path, workers=1).to_json()
    return page(request, "verify.html", sess, provider=provider, month=month, report=report, agrees=agrees)


@router.get("/vendor")
def vendor(request: Request, sess: SessionDep, month: str | None = None) -> Response:
    """Hours and licenses of every provider; strip_money keeps prices out whatever the catalog holds."""
    if not sess.scope.vendor:
        sess.require(roles.ALL_PROVIDERS)
    month, now = month_param(month), int(time.time())
    rows = []
    with conn(request) as c:
        for p in c.execute(sa.select(s.providers).order_by(s.providers.c.id)):
            hours = data.active_hours(c, p.id, month)
            doc = data.catalog(c, p.id)
            rows.append(
                {
                    "id": p.id,
                    "name": p.name,
                    "instances": len(hours),
                    "active_hours": sum(hours.values()),
                    "running": len(data.running_now(c, p.id, now)),
                    "licenses": strip_money(doc.get("licenses", [])),
                }
            )
    return page(request, "vendor.html", sess, month=month, providers=rows)
