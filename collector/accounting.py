"""Bills of a provider's month: current estimate, close (freeze), adjustments, full recomputation."""

import json
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from collector import beside, billcache, db, evidence, registry, tlog
from collector import schema as s
from collector.accounts.store import overlay, periods
from collector.settings import Settings
from protocol.timefmt import format_time, month_bounds, next_month, parse_month, previous_month


class AccountingError(Exception):
    """A bill or close the collector refuses, with the reason for the operator."""


@dataclass
class Closed:
    month: str
    size: int
    checkpoint: str
    catalog_id: int
    usage: dict[str, Any]
    invoice: dict[str, Any]
    billed: dict[str, Any]


def closed(conn: Connection, provider: str, month: str) -> Closed | None:
    r = conn.execute(
        sa.select(s.closes).where(s.closes.c.provider == provider, s.closes.c.month == month)
    ).first()
    if r is None:
        return None
    return Closed(
        r.month,
        int(r.size),
        r.checkpoint,
        int(r.catalog_id),
        json.loads(r.usage),
        json.loads(r.invoice),
        json.loads(r.billed),
    )


def catalog_for(
    conn: Connection, provider: str, month: str, now: int | None = None
) -> tuple[int, dict[str, Any]]:
    """A closed month keeps the catalog it was closed with (late data adjusts usage, not prices);
    an open one is the latest catalog with the downgraded periods as of ``now`` (default: the clock)."""
    row = conn.execute(
        sa.select(s.closes.c.catalog_id, s.closes.c.catalog_doc, s.closes.c.amended_doc,
                  s.closes.c.amended_at).where(s.closes.c.provider == provider, s.closes.c.month == month)
    ).first()
    if row is not None:
        if row.amended_doc is not None:
            # Amended for late heartbeats the close could not price (collector/amend.py); the id
            # is the amendment's time, negative, so that results cached by catalog id see it.
            return -int(row.amended_at), json.loads(row.amended_doc)
        if row.catalog_doc is not None:
            # As billed at the close: a downgrade recorded later that reaches back into the month
            # changes neither the frozen documents nor what the bundle's catalog.json reproduces.
            return int(row.catalog_id), json.loads(row.catalog_doc)
        # Closed before migration 0009: its account periods as recorded now.
        return int(row.catalog_id), overlay(conn, provider, registry.catalog_by_id(conn, row.catalog_id), now)
    latest = registry.latest_catalog(conn, provider)
    if latest is None:
        raise AccountingError(f"no catalog applied for provider {provider!r} (tr7-collector apply FILE)")
    # Downgraded periods recorded by collector.accounts join the customers' lists (billing-v1.md §8).
    return latest[0], overlay(conn, provider, latest[1], now)


def customer_names(*docs: dict[str, Any]) -> dict[str, str]:
    """Customer id -> name, the first document that has the customer deciding."""
    out: dict[str, str] = {}
    for doc in docs:
        for cu in doc.get("customers", []):
            out.setdefault(cu["id"], cu.get("name", cu["id"]))
    return out


def own_result(
    conn: Connection, provider: str, month: str, now: int | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The month's own usage and invoice over all its current leaves, from the aggregates."""
    parse_month(month)
    now = int(time.time()) if now is None else now  # one instant for the catalog and the cache key
    cid, doc = catalog_for(conn, provider, month, now)
    # The result only changes when either log (this month's, or the month before's for anchors)
    # grows, the catalog changes or an account's downgraded periods do (catalog_for overlays them
    # on the same catalog id): the read API's alerts and invoices reuse it until then.
    logs = _logs_key(conn, provider, month)
    key = (*logs, cid, tuple(sorted((c, tuple(p)) for c, p in periods(conn, provider, now).items())))
    return billcache.bill(key, lambda: _compute(conn, provider, month, doc, logs))


def _compute(conn: Connection, provider: str, month: str, doc: dict[str, Any],
             logs: tuple[Any, ...]) -> tuple[Any, Any]:
    from billing import compute, load_catalog

    rules = beside.ChainRules(conn, provider, month, logs[3:])  # on a second connection, when it can be
    bits = evidence.month_bits(conn, provider, month)
    catalog = load_catalog(doc)  # meanwhile too
    analysis = rules.result()
    act = evidence.activity(conn, provider, month, analysis.quarantined, catalog.bundles, bits)
    result = compute(act, catalog, month, analysis.chains_json())
    billcache.remember_quarantined(logs, frozenset(analysis.quarantined))  # the pages' hours need it too
    return _doc(result.usage), _doc(result.invoice)


def unpriced_usage(conn: Connection, provider: str, month: str) -> dict[str, Any]:
    """The month's usage (rows, flags, unlicensed hours) when some hour of it cannot be priced."""
    from billing import load_catalog, usage_despite_pricing

    analysis = evidence.chain_analysis(conn, provider, month)
    catalog = load_catalog(catalog_for(conn, provider, month)[1])
    act = evidence.activity(conn, provider, month, analysis.quarantined, catalog.bundles)
    return _plain(usage_despite_pricing(act, catalog, month, analysis.chains_json()))


def _logs_key(conn: Connection, provider: str, month: str) -> tuple[Any, ...]:
    """What a month's chain analysis depends on: its log and the month before's (anchors)."""
    return (conn.engine.url.render_as_string(), provider, month, *beside.log_sizes(conn, provider, month))


def quarantined(conn: Connection, provider: str, month: str) -> frozenset[str]:
    """The digests the chain rules quarantine in the month (forks, breaks), kept until either log
    grows, as own_result's documents are (which records them as it computes)."""
    return billcache.quarantined(
        _logs_key(conn, provider, month),
        lambda: frozenset(evidence.chain_analysis(conn, provider, month).quarantined),
    )


def full_result(
    conn: Connection,
    provider: str,
    month: str,
    size: int | None = None,
    catalog: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """billing-v1.md over the stored JWS themselves (the first ``size`` leaves): the reference
    result, in bounded memory (collector/reference.py)."""
    from collector import reference

    doc = catalog if catalog is not None else catalog_for(conn, provider, month)[1]
    size = tlog.log_size(conn, provider, month) if size is None else size
    return reference.full_result(conn, provider, month, size, doc)


def _canon(doc: dict[str, Any]) -> dict[str, Any]:
    # Order of lines and rows carries no meaning (billing-v1.md §7): compare top-level lists as sets.
    return {
        k: sorted(json.dumps(x, sort_keys=True) for x in v) if isinstance(v, list) else v
        for k, v in doc.items()
    }


def same_docs(a: tuple[dict[str, Any], ...], b: tuple[dict[str, Any], ...]) -> bool:
    return [_canon(x) for x in a] == [_canon(x) for x in b]


def _doc(doc: Any) -> Any:
    return doc.to_json() if hasattr(doc, "to_json") else doc


def _plain(doc: Any) -> dict[str, Any]:
    plain: dict[str, Any] = json.loads(json.dumps(_doc(doc)))
    return plain


def _closed_months(conn: Connection, provider: str) -> set[str]:
    return set(conn.execute(sa.select(s.closes.c.month).where(s.closes.c.provider == provider)).scalars())


def first_open_after(month: str, closed_months: set[str]) -> str:
    m = next_month(month)
    while m in closed_months:
        m = next_month(m)
    return m


def adjusted_months(conn: Connection, provider: str, month: str) -> list[str]:
    """The closed months whose adjustments are billed on open ``month``, oldest first."""
    done = _closed_months(conn, provider)
    return [m for m in sorted(done) if m < month and first_open_after(m, done) == month]


def adjustments_for(
    conn: Connection, provider: str, month: str, months: list[str] | None = None
) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(closed month M, its current invoice, adjustment lines) for each M billed on open ``month``
    (``months``: adjusted_months as the caller read it, under its locks)."""
    from billing import PricingError, adjustment_lines

    out = []
    for m in adjusted_months(conn, provider, month) if months is None else months:
        base = conn.execute(
            sa.select(s.baselines.c.invoice).where(
                s.baselines.c.provider == provider, s.baselines.c.month == m
            )
        ).scalar_one()
        try:
            current = own_result(conn, provider, m)[1]
        except PricingError as exc:
            # Late heartbeats of m that the catalog m was closed with cannot price: say so, and
            # the way out (it read as a fault of this month's catalog, which no apply changed)
            raise PricingError(exc.license, exc.capacity, (
                f"{exc.message}, in late heartbeats of {m}, which is closed and prices them with the "
                f"catalog it was closed with: {amend_hint(provider, m)}")) from exc
        adj = adjustment_lines(current, json.loads(base), m)
        out.append((m, current, _plain(adj)))
    return out


def amend_hint(provider: str, month: str) -> str:
    """What to do about a closed month whose late heartbeats its catalog cannot price."""
    return (f"amend its catalog: `tr7-collector catalog --provider {provider} --month {month}`, add what "
            f"is missing, then `tr7-collector amend --provider {provider} --month {month} FILE`")


def invoice(conn: Connection, provider: str, month: str) -> dict[str, Any]:
    """What `bill` shows: a closed month's billed invoice, else the estimate with adjustment lines."""
    from billing import with_adjustments

    c = closed(conn, provider, month)
    if c is not None:
        return c.billed
    own = own_result(conn, provider, month)[1]
    adjs = [adj for _m, _cur, adj in adjustments_for(conn, provider, month)]
    return _plain(with_adjustments(own, adjs)) if adjs else own


def close(
    conn: Connection,
    settings: Settings,
    provider: str,
    month: str,
    force: bool = False,
    now: int | None = None,
) -> Closed:
    """Freeze usage, invoice, log size and a signed checkpoint; run inside one write transaction."""
    from billing import with_adjustments

    now = int(time.time()) if now is None else now
    start, end = month_bounds(month)
    if start > now:  # --force is for the month under way; a close is never undone (a typo'd year)
        raise AccountingError(f"{month} has not begun: nothing to close")
    if end > now and not force:
        raise AccountingError(f"{month} has not ended yet (use --force to close it anyway)")
    if closed(conn, provider, month) is not None:
        raise AccountingError(f"{month} is already closed for {provider}")
    # The downgrades as of the close, those no tick recorded yet included (accounts.store.periods).
    cid, doc = catalog_for(conn, provider, month, now)
    # Lock the logs' counter rows, the month before's first (ingest's lock order): no heartbeat of
    # the month, nor of the month before (its anchors), is appended while we read them.
    # lock_log, not a plain SELECT ... FOR UPDATE: with no row yet for the month before, that
    # locked nothing, and an ingest creating it could commit anchors this close then computed
    # with but recorded as size 0 (a closed bundle that never verifies). The row is made empty.
    # And first, oldest first too, the logs of the closed months whose adjustments this close
    # freezes, and of the months before them (their anchors): a late heartbeat of one of them
    # committed between the statements that compute its adjustment (its chain rules, then its
    # hours) could be half seen, frozen lines matching no state of its log (a review's reading).
    adjusted = adjusted_months(conn, provider, month)
    older = {x for m in adjusted for x in (previous_month(m), m)}
    tlog.lock_existing_logs(conn, provider, sorted(older - {previous_month(month), month}))
    anchor_size = tlog.lock_log(conn, provider, previous_month(month))
    size = tlog.lock_log(conn, provider, month)
    # PostgreSQL (READ COMMITTED): a close of the month before, committed while this one waited
    # for its log, adds months to adjust whose logs were not locked above (a review reproduced it:
    # they were adjusted unlocked). Taken now, those locks would break the oldest-first order:
    # the transaction starts again instead, and its first read sees them. SQLite: never differs.
    if adjusted_months(conn, provider, month) != adjusted:
        raise db.Retry(f"closed months of {provider} changed while {month}'s close waited for its logs")
    usage, own = own_result(conn, provider, month, now)
    adjs = adjustments_for(conn, provider, month, adjusted)
    if not adjs:  # the first open month after closed ones carries their adjustments: no typo
        _refuse_before_the_catalog(provider, month, end, size, doc)
    billed = _plain(with_adjustments(own, [a for _m, _c, a in adjs])) if adjs else own
    note = tlog.checkpoint(conn, settings, provider, month, size)
    conn.execute(
        s.closes.insert().values(
            provider=provider,
            month=month,
            size=size,
            checkpoint=note,
            catalog_id=cid,
            usage=json.dumps(usage),
            invoice=json.dumps(own),
            billed=json.dumps(billed),
            closed_at=now,
            catalog_doc=json.dumps(doc, sort_keys=True),
            anchor_size=anchor_size,
        )
    )
    _set_baseline(conn, provider, month, own, now, size)
    for m, current, _adj in adjs:
        # These adjustments are now invoiced. The size read after them: no smaller than the log
        # they saw, so amend's check over it is never looser (see _set_baseline)
        _set_baseline(conn, provider, m, current, now, tlog.log_size(conn, provider, m))
    return Closed(month, size, note, cid, usage, own, billed)


def _refuse_before_the_catalog(provider: str, month: str, end: int, size: int, doc: dict[str, Any]) -> None:
    """A month that ended before the catalog's first license or platform license began, with no
    heartbeat, is a typo (1999-01): closed, it froze a 0.00 invoice for good, and a close is never
    undone. A month the catalog may bill, or one holding evidence, is closed as asked."""
    from billing import load_catalog

    cat = load_catalog(doc)  # the month's catalog, valid: it was applied
    starts = [x.start for x in cat.licenses] + [x.valid_from for x in cat.platform_licenses]
    if starts and size == 0 and end <= min(starts):
        raise AccountingError(f"{month} ended before {provider}'s first license begins "
                              f"({format_time(min(starts))}) and holds no heartbeat: nothing to close "
                              "(a close cannot be undone)")


def _set_baseline(
    conn: Connection, provider: str, month: str, inv: dict[str, Any], now: int, size: int
) -> None:
    """What has been invoiced for ``month``: ``inv``, computed over the first ``size`` leaves of
    its log. Where the size may be larger than the invoice's log (another process logging
    meanwhile), amend's recomputation over it can only lose lines, and so refuse, never accept."""
    b = s.baselines.c
    conn.execute(s.baselines.delete().where(b.provider == provider, b.month == month))
    conn.execute(s.baselines.insert().values(provider=provider, month=month, invoice=json.dumps(inv),
                                             set_at=now, size=size))
