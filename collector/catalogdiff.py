"""What applying a catalog over the latest one changes, and which changes rewrite billed history.

A change is *retroactive* when it alters the billing facts in force at some instant already
billed in a month that is not closed (docs/collector.md, "Catalog changes and billed history").
Every open month is billed with the latest catalog (collector/accounting.py: catalog_for), so
such a change silently reprices hours that have already run; a closed month keeps the catalog
it was closed with and is never affected.

Facts per kind (billing-v1.md §7), compared instant by instant over the billed past:
- a license: whether it is in force, and then its customer, instance, model, unit, pack,
  day_counts and the capacity entry in force;
- a platform license: whether it is valid;
- a customer: whether it is downgraded (its name is not a billing input);
- rates, ``policy``, ``bundles`` and ``provider.currency`` have no validity period: any change
  reprices the elapsed hours of every open month. ``provider.name`` is not a billing input.
"""

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from collector import schema as s
from protocol.timefmt import format_time, month_bounds, month_of, next_month

HOUR, DAY = 3600, 86400


@dataclass(frozen=True)
class Change:
    line: str  # e.g. "license SL-1: changed", as apply always printed it
    months: tuple[str, ...] = ()  # the open months it reprices; empty: not retroactive
    why: str = ""

    @property
    def retroactive(self) -> bool:
        return bool(self.months)

    def __str__(self) -> str:
        if not self.months:
            return self.line
        return f"{self.line}  [RETROACTIVE: reprices {', '.join(self.months)}: {self.why}]"


@dataclass(frozen=True)
class Past:
    """The billed past of a provider: the elapsed part of each month that is not closed."""

    now: int
    months: tuple[str, ...]  # open months from the window's first month to now's month

    def spans(self, grain: int) -> list[tuple[str, int, int]]:
        """(month, start, end) of each open month up to ``now`` rounded up to ``grain``.

        The hour (or UTC day, for device-day licenses) in progress counts as billed: an hour
        belongs to a period when the two overlap (billing-v1.md), so a change taking effect
        inside it reprices it from its start.
        """
        cutoff = -(-self.now // grain) * grain
        out = []
        for m in self.months:
            a, b = month_bounds(m)
            if a < cutoff:
                out.append((m, a, min(b, cutoff)))
        return out


def billed_past(conn: Connection, provider: str, now: int) -> Past:
    """The window of open months: from the earliest month that is not closed and either has
    heartbeats, or follows a closed month (its invoice takes their adjustment lines), up to
    now's month; without either, now's month alone. Closed months inside it are left out.
    """
    current = month_of(now)
    closed = set(conn.execute(sa.select(s.closes.c.month).where(s.closes.c.provider == provider)).scalars())
    logged = conn.execute(
        sa.select(s.logs.c.month).where(s.logs.c.provider == provider, s.logs.c.size > 0)
    ).scalars()
    starts = [current, *(m for m in logged if m not in closed)]
    if closed:
        m = next_month(min(closed))
        while m in closed:
            m = next_month(m)
        starts.append(m)
    months, m = [], min(starts)
    while m <= current:
        if m not in closed:
            months.append(m)
        m = next_month(m)
    return Past(now, tuple(months))


def _in(t: int, start: int, end: int | None) -> bool:
    return start <= t and (end is None or t < end)


def _first_difference(
    old: Callable[[int], Any],
    new: Callable[[int], Any],
    points: Iterable[int | None],
    spans: list[tuple[str, int, int]],
) -> tuple[list[str], int | None]:
    """Months whose billed span holds an instant where ``old(t) != new(t)``, and the first one.

    Both functions are constant between consecutive ``points`` (their periods' bounds), so
    checking each span's start and every point inside it covers every instant.
    """
    pts = sorted({p for p in points if p is not None})
    months, first = [], None
    for m, a, b in spans:
        for t in [a, *(p for p in pts if a < p < b)]:
            if old(t) != new(t):
                months.append(m)
                first = t if first is None else min(first, t)
                break
    return months, first


def _license_at(lic: Any) -> Callable[[int], Any]:
    def at(t: int) -> Any:
        if lic is None or not _in(t, lic.start, lic.end):
            return None
        cap = None
        for e in lic.capacity:  # sorted by from, strictly (billing.load_catalog)
            if e.start > t:
                break
            cap = (e.bundle, e.bandwidth_mbps, e.vservices)
        return (lic.customer, lic.instance, lic.model, lic.unit, lic.pack, lic.day_counts, cap)

    return at


def _license_points(lic: Any) -> list[int | None]:
    return [] if lic is None else [lic.start, lic.end, *(e.start for e in lic.capacity)]


_FACTS = ("customer", "instance", "model", "unit", "pack", "day_counts", "capacity")
_CAPACITY = ("bundle", "bandwidth_mbps", "vservices")


def _show(name: str, v: Any) -> str:
    if name != "capacity" or v is None:
        return repr(v)
    return "{" + ", ".join(f"{n}: {x}" for n, x in zip(_CAPACITY, v, strict=True) if x is not None) + "}"


def _describe(before: Any, after: Any, t: int) -> str:
    when = format_time(t)
    if before is None:
        return f"in force at {when} (it was not)"
    if after is None:
        return f"no longer in force at {when}"
    diff = [
        f"{n} {_show(n, x)} -> {_show(n, y)}" for n, x, y in zip(_FACTS, before, after, strict=True) if x != y
    ]
    return f"at {when}: " + ", ".join(diff)


def _by(items: Any, key: Callable[[Any], Any]) -> dict[Any, Any]:
    return {key(x): x for x in (items or [])}


def _kinds() -> list[tuple[str, Any, Callable[[Any], Any]]]:
    return [
        ("customer", "customers", lambda x: x["id"]),
        ("license", "licenses", lambda x: x["id"]),
        ("platform license", "platform_licenses", lambda x: x["id"]),
        ("hourly rate", ("rates", "hourly"), lambda x: f"{x['bundle']}/{x['max_bandwidth_mbps']}"),
        ("monthly rate", ("rates", "monthly"), lambda x: x["pack"]),
    ]


def _get(doc: dict[str, Any], path: Any) -> Any:
    return (doc.get(path[0]) or {}).get(path[1]) if isinstance(path, tuple) else doc.get(path)


def changes(
    old: dict[str, Any] | None,
    new: dict[str, Any],
    past: Past | None = None,
    view: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> list[Change]:
    """Every change of ``new`` over ``old`` (added, changed, removed), each classified against
    ``past`` (None, or no ``old``: nothing is retroactive). Both documents are valid catalogs.

    ``view``: what billing reads of a stored document (the accounts' downgraded periods added,
    collector.accounts.store.overlay): the facts are compared on it, the lines on the documents.
    """
    from billing import load_catalog

    if not old:
        out: list[Change] = []
        for label, path, key in _kinds():
            out += [Change(f"{label} {k}: added") for k in sorted(_by(_get(new, path), key))]
        return out
    a_cat, b_cat = (load_catalog(view(d) if view else d) for d in (old, new))
    a_lic, b_lic = ({x.id: x for x in c.licenses} for c in (a_cat, b_cat))
    a_pl, b_pl = ({x.id: x for x in c.platform_licenses} for c in (a_cat, b_cat))
    hours = past.spans(HOUR) if past else []
    days = past.spans(DAY) if past else []
    every = tuple(m for m, _a, _b in hours)
    no_validity = "no validity period: every elapsed hour of the open months is repriced"

    def classify(label: str, k: Any) -> tuple[tuple[str, ...], str]:
        if not hours:
            return (), ""
        if label == "license":
            lo, ln = a_lic.get(k), b_lic.get(k)
            daily = any(x is not None and x.unit == "device_day" for x in (lo, ln))
            fo, fn = _license_at(lo), _license_at(ln)
            months, t = _first_difference(
                fo, fn, _license_points(lo) + _license_points(ln), days if daily else hours
            )
            return tuple(months), "" if t is None else _describe(fo(t), fn(t), t)
        if label == "platform license":
            po, pn = a_pl.get(k), b_pl.get(k)

            def valid(p: Any) -> Callable[[int], bool]:
                return lambda t: p is not None and _in(t, p.valid_from, p.valid_to)

            pts = [x for p in (po, pn) if p is not None for x in (p.valid_from, p.valid_to)]
            months, t = _first_difference(valid(po), valid(pn), pts, hours)
            return tuple(months), "" if t is None else f"validity differs at {format_time(t)}"
        if label == "customer":
            co, cn = a_cat.customers.get(k), b_cat.customers.get(k)

            def down(c: Any) -> Callable[[int], bool]:
                return lambda t: c is not None and any(_in(t, x, y) for x, y in c.downgraded)

            pts = [x for c in (co, cn) if c is not None for p in c.downgraded for x in p]
            months, t = _first_difference(down(co), down(cn), pts, hours)
            return tuple(months), "" if t is None else f"downgraded periods differ at {format_time(t)}"
        return every, f"rates have {no_validity}"  # hourly and monthly rates

    out = []
    for label, path, key in _kinds():
        a, b = _by(_get(old, path), key), _by(_get(new, path), key)
        for verb, ks in (
            ("added", sorted(b.keys() - a.keys())),
            ("changed", sorted(k for k in a.keys() & b.keys() if a[k] != b[k])),
            ("removed", sorted(a.keys() - b.keys())),
        ):
            for k in ks:
                months, why = classify(label, k)
                out.append(Change(f"{label} {k}: {verb}", months, why))
    for member in ("provider", "policy", "bundles"):
        if old.get(member) == new.get(member):
            continue
        if member == "provider":
            retro = a_cat.currency != b_cat.currency
            why = f"currency {a_cat.currency} -> {b_cat.currency}"
        elif member == "policy":
            retro = (a_cat.gap_mode, a_cat.max_hours) != (b_cat.gap_mode, b_cat.max_hours)
            why = f"the gap policy has {no_validity}"
        else:
            retro = a_cat.bundles != b_cat.bundles
            why = f"the bundle ranking has {no_validity}"
        out.append(Change(f"{member}: changed", every if retro else (), why if retro and every else ""))
    return out
