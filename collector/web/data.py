"""What the pages show, read from the collector's tables; billing results cached (stale-while-revalidate)."""

import functools
import json
from collections import defaultdict
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from markupsafe import Markup
from sqlalchemy.engine import Connection

from billing import PricingError
from billing.activity import MonthBits
from billing.compute import bridged_hours
from collector import accounting, db, evidence, registry
from collector import schema as s
from collector.resultcache import alerts_of, cached, clones, db_id, health, licensing, outdated
from protocol.timefmt import format_time, month_bounds, parse_time

HOUR, DAY = 3600, 86400


def results_stale(conn: Connection, provider: str, month: str) -> bool:
    """Whether the month's bill results() just gave, or the alerts of that bill, are the previous
    computation's (a newer one is being made: after a correction the overview showed the old
    totals with no sign of it; the two refresh apart)."""
    return any(outdated((slot, db_id(conn), provider, month)) for slot in ("results", "licensing"))


def warm(engine: Any, month: str, now: int) -> None:
    """Compute what the overview needs for every provider (run in a thread at server start)."""
    with db.read_conn(engine) as c:
        for provider in c.execute(sa.select(s.providers.c.id)).scalars().all():
            results(c, provider, month)
            active_hours(c, provider, month)
            clones(c, provider, month)
            health(c, provider, month, now)


def results(conn: Connection, provider: str, month: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(usage, invoice as billed: estimate with adjustment lines), None without a catalog or when
    the month cannot be priced (billing-v1.md §4: no invoice rather than a wrong one; the
    pricing_error alert says why)."""

    def compute(c: Connection) -> tuple[dict[str, Any], dict[str, Any]] | None:
        try:
            usage, _own = accounting.own_result(c, provider, month)
            return usage, accounting.invoice(c, provider, month)
        except accounting.AccountingError:
            return None
        except PricingError:
            closed = accounting.closed(c, provider, month)
            # A closed month's late heartbeats that cannot be priced: what was invoiced stands
            return None if closed is None else (closed.usage, closed.billed)

    return cached(conn, ("results", db_id(conn), provider, month), (), compute)


Late = tuple[Decimal, Decimal]  # (not invoiced yet, invoiced since the close)


def late(conn: Connection, provider: str, month: str, customer: str,
         billed: dict[str, Any]) -> tuple[Late, Late]:
    """A closed month's hours and device-days of ``customer`` beyond what its invoice billed at close
    (late heartbeats; negative: heartbeats quarantined since), each as (not invoiced yet: the next
    open month's adjustment lines bill them, invoiced since: the adjustment lines of later closes
    did). Counted against the frozen invoice alone, hours a later close had invoiced were shown as
    still to come, and an MSP adding them by hand billed them twice; device-days were said on no
    page (a review). Zeros when the month cannot be priced."""

    def hours(inv: dict[str, Any]) -> Decimal:
        return sum((Decimal(x["quantity"]) for x in inv["lines"]
                    if x["customer"] == customer and not x.get("adjusts")), Decimal(0))

    def days(inv: dict[str, Any]) -> Decimal:
        return sum((Decimal(x["device_days"]) for x in inv["device_days"]
                    if x["customer"] == customer and not x.get("adjusts")), Decimal(0))

    zero = (Decimal(0), Decimal(0))
    try:
        current = accounting.own_result(conn, provider, month)[1]
    except (accounting.AccountingError, PricingError):
        return zero, zero
    base = conn.execute(sa.select(s.baselines.c.invoice).where(
        s.baselines.c.provider == provider, s.baselines.c.month == month)).scalar()
    invoiced = json.loads(base) if base is not None else billed
    return ((hours(current) - hours(invoiced), hours(invoiced) - hours(billed)),
            (days(current) - days(invoiced), days(invoiced) - days(billed)))


def catalog(conn: Connection, provider: str) -> dict[str, Any]:
    latest = registry.latest_catalog(conn, provider)
    return {} if latest is None else latest[1]


def month_catalog(conn: Connection, provider: str, month: str) -> dict[str, Any]:
    """The catalog the month is billed with: a closed month's frozen one (a customer removed from
    the catalog since is still on the pages of the months that billed it), else the latest."""
    try:
        return accounting.catalog_for(conn, provider, month)[1]
    except accounting.AccountingError:
        return {}


@functools.cache
def _offsets(bits: int) -> tuple[int, ...]:
    return tuple(h * HOUR for h in range(24) if bits >> h & 1)


def hour_owners(hours: dict[str, set[int]], every: list[dict[str, Any]]) -> dict[str, dict[int, str | None]]:
    """instance -> hour (epoch of each) -> the licence of ``every`` that decides it, None for none:
    one overlapping the hour, as billing-v1.md §1 matches an hour to a license (`[HH:00, HH+1:00)`
    and `[start, end)` overlap, a null end being open), the first in §3's order where several do
    (a hand-over hour showed on both customers' pages, and only one of them is billed for it)."""
    model = {lic["id"]: lic.get("model") for lic in every}
    periods: dict[str, list[tuple[str, int, int | None]]] = defaultdict(list)
    for lic in every:
        end = None if lic.get("end") is None else parse_time(lic["end"])
        periods[lic["instance"]].append((lic["id"], parse_time(lic["start"]), end))
    for ps in periods.values():  # §3's order, as billing.compute._ordered: fixed, latest start, greatest id
        ps.sort(key=lambda p: p[0], reverse=True)
        ps.sort(key=lambda p: (model[p[0]] != "fixed", -p[1]))

    def owner(inst: str, h: int) -> str | None:
        return next((i for i, a, b in periods.get(inst, ()) if h + HOUR > a and (b is None or h < b)), None)

    return {inst: {h: owner(inst, h) for h in hs} for inst, hs in hours.items()}


def downgraded_periods(doc: dict[str, Any], customer: str) -> list[tuple[str, str | None]]:
    """The customer's downgraded periods in the catalog ``doc`` as written ([start, end), a null
    end: still downgraded), those the accounts recorded included when ``doc`` was overlaid."""
    for cu in doc.get("customers", []):
        if cu.get("id") == customer:
            return [(start, end) for start, end in cu.get("downgraded", [])]
    return []


def downgraded_hours(doc: dict[str, Any], customer: str, month: str) -> set[int]:
    """The month's hours (epoch of each) that belong to one of the customer's downgraded periods
    in the catalog ``doc`` (billing-v1.md §8; the hours billing.compute leaves unbilled when PAYG)."""
    m0, m1 = month_bounds(month)
    bits, mask = MonthBits(m0, m1), 0
    for start, end in downgraded_periods(doc, customer):
        mask |= bits.period(parse_time(start), None if end is None else parse_time(end))
    return {m0 + i * HOUR for i in range(bits.n) if mask >> i & 1}


def hour_sets(
    conn: Connection, provider: str, month: str, instances: list[str] | None = None
) -> tuple[dict[str, set[int]], dict[str, set[int]]]:
    """instance -> active hours, instance -> seen hours (epoch of each hour), from the day bitmaps."""
    m0, m1 = month_bounds(month)
    d = s.days.c
    q = sa.select(d.instance, d.day, d.active, d.seen).where(d.provider == provider)
    if instances is not None:
        # The days' primary key is (provider, day, instance, vm): listing the days lets the
        # database look each (day, instance) up instead of scanning the month.
        q = q.where(d.day.in_(month_days(month)), d.instance.in_(instances))
    else:
        q = q.where(d.day >= m0, d.day < m1)
    a_bits: dict[str, int] = defaultdict(int)
    s_bits: dict[str, int] = defaultdict(int)
    for inst, day, act, bits in conn.execute(q):  # unpacked: Row attribute access is slow
        k = (day - m0) // HOUR
        s_bits[inst] |= bits << k
        a_bits[inst] |= act << k
    # As billing counts them: not the hours only quarantined heartbeats (a fork's copies) gave
    evidence.without_quarantined(
        conn, provider, month, accounting.quarantined(conn, provider, month), a_bits, s_bits
    )
    active: dict[str, set[int]] = defaultdict(set)
    seen: dict[str, set[int]] = defaultdict(set)
    for inst, bits in s_bits.items():
        seen[inst].update(_hours(m0, bits))
        if a_bits[inst]:
            active[inst].update(_hours(m0, a_bits[inst]))
    return active, seen


def _hours(m0: int, bits: int) -> list[int]:
    """The hour starts of a month bitset (bit i = m0 + i h), a day's 24 bits at a time."""
    out: list[int] = []
    day = m0
    while bits:
        if bits & 0xFFFFFF:
            out.extend(day + off for off in _offsets(bits & 0xFFFFFF))
        bits >>= 24
        day += DAY
    return out


CODES = {"active": "a", "inactive": "i", "unknown": "u", "bridged": "b"}


def heatmap(month: str, active: set[int], seen: set[int], bridge_max: int) -> list[dict[str, Any]]:
    """One row per day, 24 cells each: active / inactive / unknown / bridged.

    Cells are pre-rendered (class letters, no per-cell attributes): a customer page holds a month
    for each of its instances, tens of thousands of cells; the hour is the row's day + the column.
    """
    m0, m1 = month_bounds(month)
    bridged = bridged_hours(active, seen, m1, bridge_max) if bridge_max else set()
    rows = []
    for day in range(m0, m1, DAY):
        codes = []
        for h in range(day, day + DAY, HOUR):
            codes.append("a" if h in active else "i" if h in seen else "b" if h in bridged else "u")
        html = "".join(f'<td class="{c}"></td>' for c in codes)
        # the day's counts in text, for readers who cannot see colours or hover (screen readers, touch)
        rows.append({"day": format_time(day)[:10], "codes": codes, "html": Markup(html),
                     "active": codes.count("a"), "bridged": codes.count("b")})
    return rows


def bridge_max(doc: dict[str, Any]) -> int:
    gaps = (doc.get("policy") or {}).get("gaps") or {}
    return int(gaps.get("max_hours", 0)) if gaps.get("mode") == "bridge" else 0


def running_now(conn: Connection, provider: str, now: int) -> list[str]:
    """Instances active in the current or the previous clock hour (heartbeats come every few minutes)."""
    out: set[str] = set()
    d = s.days.c
    for t in (now, now - HOUR):
        day, bit = t - t % DAY, (t % DAY) // HOUR
        q = sa.select(d.instance).where(d.provider == provider, d.day == day, d.active.op("&")(1 << bit) != 0)
        out.update(conn.execute(q).scalars())
    return sorted(out)


def active_hours(conn: Connection, provider: str, month: str) -> dict[str, int]:
    """instance -> active hours in the month (an hour on two vms counts once); cached like bills."""
    return cached(
        conn, ("hours", db_id(conn), provider, month), (), lambda c: _active_hours(c, provider, month)
    )


def _active_hours(conn: Connection, provider: str, month: str) -> dict[str, int]:
    """Every instance seen in the month (so its length counts instances seen, also those only
    seen stopped), with its active hours, as billing counts them."""
    active, seen = evidence.billed_bits(conn, provider, month, accounting.quarantined(conn, provider, month))
    return {inst: active[inst].bit_count() for inst, bits in seen.items() if bits}


def month_days(month: str) -> list[int]:
    m0, m1 = month_bounds(month)
    return list(range(m0, m1, DAY))


def provider_alerts(conn: Connection, provider: str, month: str, now: int) -> list[dict[str, Any]]:
    """The read API's alerts (resultcache.alerts_of, one list for both: the overview had its own
    and lacked none, but /alerts and /metrics lacked some), as the overview shows them: an agent
    by its name, a run of sequence numbers as one text."""
    names = {a["kid"]: a["name"] for a in health(conn, provider, month, now)}
    out = []
    for alert in alerts_of(conn, provider, month, now, licensing(conn, provider, month)):
        shown = dict(alert)
        if "agent" in shown:
            shown["agent"] = shown.pop("name", None) or names.get(alert["agent"], alert["agent"])
        if "seqs" in shown:
            shown["seq"] = ", ".join(map(str, shown.pop("seqs")))
        out.append(shown)
    return out
