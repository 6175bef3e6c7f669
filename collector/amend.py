"""`tr7-collector amend`: a closed month's catalog amended for late heartbeats it cannot price.

A closed month keeps the catalog it was closed with, also for the adjustment lines of its late
heartbeats (docs/protocol-decisions.md). One late heartbeat in an hour that catalog cannot price
(a capacity without a rate, an hour before a license's first capacity entry) made the next
month's invoice an error (billing-v1.md §4: no invoice rather than a wrong one), its close
impossible and the month's export too, with no way out: `apply` never reaches a closed month.

An amendment may only price what the close did not see: the month's frozen documents,
recomputed from the leaves the close had with the amended catalog, must come out unchanged.
So the frozen invoice stands, the bundle's closed/ documents still verify against the amended
catalog.json, and only the late heartbeats' hours gain the prices they lacked.
"""

import json
import time
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from audit.recompute import describe_diff
from billing import CatalogError, PricingError, load_catalog
from collector import accounting, reference, tlog
from collector import schema as s


class AmendError(accounting.AccountingError):
    """The amendment is refused; the message says why."""


def amend_closed(conn: Connection, provider: str, month: str, doc: dict[str, Any],
                 now: int | None = None) -> list[str]:
    """Store ``doc`` as the closed month's catalog for its adjustments (in a write transaction);
    returns what it changes for the month's current (late-data) documents, one line each."""
    row = conn.execute(
        sa.select(s.closes).where(s.closes.c.provider == provider, s.closes.c.month == month)
    ).first()
    if row is None:
        raise AmendError(f"{month} is not closed for {provider}: its catalog is the latest one "
                         "(tr7-collector apply)")
    theirs = doc.get("provider", {}).get("id") if isinstance(doc.get("provider"), dict) else None
    if theirs != provider:
        raise AmendError(f"the catalog is provider {theirs!r}'s, not {provider!r}'s")
    try:
        load_catalog(doc)
    except CatalogError as exc:
        raise AmendError(str(exc)) from exc
    frozen = (json.loads(row.usage), json.loads(row.invoice))
    try:
        again = reference.full_result(conn, provider, month, int(row.size), doc)
    except PricingError as exc:
        raise AmendError(f"the catalog cannot price what the close billed: {exc}") from exc
    if not accounting.same_docs(again, frozen):
        # "stored" is what the close froze, "recomputed" what the amended catalog would make of it
        diffs = describe_diff(frozen[1], again[1]) or describe_diff(frozen[0], again[0])
        raise AmendError(f"the catalog changes what {month} was closed with (only what the close did "
                         f"not see may be priced; start from `tr7-collector catalog --provider {provider} "
                         f"--month {month}`): {'; '.join(diffs[:3])}")
    _keeps_what_was_invoiced(conn, provider, month, doc)
    before = _current(conn, provider, month)
    now = int(time.time()) if now is None else now
    # Strictly later than the last amendment: results are cached by it (a second one in the
    # same second left the server on the first)
    at = max(now, int(row.amended_at) + 1) if row.amended_at is not None else now
    conn.execute(
        s.closes.update()
        .where(s.closes.c.provider == provider, s.closes.c.month == month)
        .values(amended_doc=json.dumps(doc, sort_keys=True, separators=(",", ":")), amended_at=at)
    )
    after = _current(conn, provider, month)
    if isinstance(before, str) and not isinstance(after, str):
        return [f"{month}'s late heartbeats are priced now: total {after['total']} (closed at "
                f"{frozen[1]['total']})"]
    if isinstance(after, str):
        return [f"amended, but {month}'s late heartbeats still cannot be priced: {after}"]
    return [f"amended; {month}'s current total {after['total']} (closed at {frozen[1]['total']})"]


def _keeps_what_was_invoiced(conn: Connection, provider: str, month: str, doc: dict[str, Any]) -> None:
    """Every line and device-day row invoiced for the month so far (its baseline: the frozen
    invoice, then what each later close billed of its adjustments) keeps its price under ``doc``:
    a second amendment repriced late hours a later month had already invoiced (-0.09, +0.50).

    Recomputed over the leaves the baseline was computed over: a fork logged since quarantines
    hours that were invoiced, and their line, gone from the current documents whatever the
    catalog, read as a repricing (a baseline from before migration 0011 has no size: the log's)."""
    B = s.baselines.c
    base = conn.execute(sa.select(B.invoice, B.size).where(B.provider == provider, B.month == month)).first()
    if base is None:
        return
    size = tlog.log_size(conn, provider, month) if base.size is None else int(base.size)
    try:
        now = reference.full_result(conn, provider, month, size, doc)[1]
    except PricingError as exc:
        raise AmendError(f"the catalog still cannot price {month}'s heartbeats: {exc}") from exc
    invoiced, then = _lines(json.loads(base.invoice)), _lines(now)
    # Each line keeps its price, and none of its quantity or amount: a downgraded period added over
    # hours already invoiced kept every price, and made the next month credit them (-8 h) with no
    # heartbeat behind it (billing review). More is no change to what was invoiced: the baseline
    # may have been computed over fewer leaves than the log holds now.
    lost = sorted((k for k, (q, a) in invoiced.items()
                   if k not in then or then[k][0] < q or then[k][1] < a), key=str)
    if lost:
        raise AmendError(f"the catalog changes what was already invoiced for {month} (its close and the "
                         f"adjustments later closes billed): {', '.join(map(str, lost[:3]))} would no longer "
                         "be billed so")


def _lines(invoice: dict[str, Any]) -> dict[tuple[Any, ...], tuple[Decimal, Decimal]]:
    """Each line's and device-day row's key (its price in it) -> (quantity, amount)."""
    out = {_key(x): (Decimal(str(x["quantity"])), Decimal(x["amount"])) for x in invoice["lines"]}
    out.update({_row_key(x): (Decimal(str(x["device_days"])), Decimal(x["amount"]))
                for x in invoice["device_days"]})
    return out


def _key(line: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(line[k] for k in ("customer", "license", "instance", "bundle", "bandwidth_mbps",
                                   "vservices", "price"))


def _row_key(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row["customer"], row["pack"], row["price"])


def _current(conn: Connection, provider: str, month: str) -> dict[str, Any] | str:
    try:
        return accounting.own_result(conn, provider, month)[1]
    except PricingError as exc:
        return str(exc)
