"""Billing-v1.md §2-§5 and §7: hour classes, coverage, pricing, device-days, usage and invoice documents."""

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypedDict

from billing.activity import HOUR, Activity, MonthBits
from billing.catalog import Catalog, License, Period, load_catalog
from billing.errors import PricingError
from billing.money import money_text, round_half_up
from billing.pricing import OverUse, Pricer
from protocol.timefmt import month_bounds

DAY = 86400
DAY_BITS = (1 << 24) - 1  # one UTC day of hour bits


@dataclass(frozen=True)
class BillingResult:
    usage: dict[str, Any]
    invoice: dict[str, Any]


def hour_range(start: int, end: int | None, m0: int, m1: int) -> range:
    """The month's hours that belong to [start, end), i.e. overlap it."""
    lo = max(m0, start - start % HOUR)
    hi = m1 if end is None else min(m1, -(-end // HOUR) * HOUR)
    return range(lo, max(lo, hi), HOUR)


def bridged_hours(active: set[int], seen: set[int], m1: int, max_hours: int) -> set[int]:
    """Maximal runs of at most max_hours unknown hours whose neighbours are both active, in the month."""
    out: set[int] = set()
    for h in active:
        run: list[int] = []
        n = h + HOUR
        while n < m1 and n not in seen and len(run) <= max_hours:
            run.append(n)
            n += HOUR
        if run and len(run) <= max_hours and n < m1 and n in active:
            out.update(run)
    return out


def bridged_mask(active: int, seen: int, n: int, max_hours: int) -> int:
    """`bridged_hours` on bitsets of the month's n hours (seen includes active): loops over runs."""
    out = 0
    x = ~seen & ((1 << n) - 1)  # the unknown hours
    while x:
        low = x & -x
        carry = x + low  # the run of unknown hours starting at low carries into the hour after it
        run = x & ~carry
        x &= carry
        first = low.bit_length() - 1
        after = first + run.bit_count()
        if after - first <= max_hours and first > 0 and after < n \
                and active >> (first - 1) & 1 and active >> after & 1:
            out |= run
    return out


def _mask_of(periods: Iterable[Period], bits: MonthBits) -> int:
    out = 0
    for s, e in periods:
        out |= bits.period(s, e)
    return out


class _Row(TypedDict):
    """A license's row of the usage document as it is accumulated (flags a set until written)."""

    instance: str
    license: str
    customer: str
    active_hours: int
    bridged_hours: int
    unknown_hours: int
    fixed_hours: int
    payg_hours: int
    flags: set[str]


# (customer, license, instance, bundle, bandwidth_mbps, vservices, price text): an invoice line
_LineKey = tuple[str, str, str, str | None, int, int, str]


def _ordered(licenses: list[License]) -> list[License]:
    """Decision order (§3): fixed before payg; then latest start; ties the greatest id."""
    by_id = sorted(licenses, key=lambda lic: lic.id, reverse=True)
    return sorted(by_id, key=lambda lic: (lic.model != "fixed", -lic.start))


def _assigned_days(lic: License, downgraded: tuple[Period, ...], m0: int, m1: int) -> int:
    count = 0
    for d in range(m0, m1, DAY):
        if d >= (lic.end if lic.end is not None else m1 + DAY) or d + DAY <= lic.start:
            continue  # the day does not belong to the license period
        if any(s <= d and (e is None or e >= d + DAY) for s, e in downgraded):
            continue  # wholly inside a downgraded period
        count += 1
    return count


class _Month:
    """One computation: accumulates rows, lines and device-days while walking the instances.

    Hours are bitsets (billing.activity.MonthBits): classes, coverage and decisions are mask
    operations and counts are bit counts, so the work per instance does not grow with its hours."""

    def __init__(self, activity: Activity, catalog: Catalog, month: str, tolerant: bool = False) -> None:
        self.activity, self.catalog, self.month = activity, catalog, month
        self.tolerant = tolerant  # usage_despite_pricing: an hour no rate prices is left unpriced
        self.m0, self.m1 = m0, m1 = month_bounds(month)
        self.bits = bits = MonthBits(m0, m1)
        self.platform = 0
        for p in catalog.platform_licenses:
            self.platform |= bits.period(p.valid_from, p.valid_to)
        self.down = {cid: _mask_of(c.downgraded, bits) for cid, c in catalog.customers.items()}
        self.licenses = [lic for lic in catalog.licenses
                         if lic.start < m1 and (lic.end is None or lic.end > m0)]
        self.masks = {lic.id: bits.period(lic.start, lic.end) for lic in self.licenses}
        self.by_inst: dict[str, list[License]] = defaultdict(list)
        for lic in self.licenses:
            self.by_inst[lic.instance].append(lic)
        self.rows: dict[str, _Row] = {
            lic.id: {"instance": lic.instance, "license": lic.id, "customer": lic.customer,
                     "active_hours": 0, "bridged_hours": 0, "unknown_hours": 0,
                     "fixed_hours": 0, "payg_hours": 0, "flags": set()}
            for lic in self.licenses}
        self.lines: dict[_LineKey, int] = defaultdict(int)
        self.active_days: dict[str, set[int]] = defaultdict(set)
        self.unlicensed: dict[str, int] = {}
        self.pricer = Pricer(catalog)
        self.overuse = OverUse(catalog, self.pricer)

    def instance(self, inst: str) -> None:
        active, seen = self.activity.month_masks(inst, self.bits)
        bridged = 0
        if self.catalog.gap_mode == "bridge" and active:
            bridged = bridged_mask(active, seen, self.bits.n, self.catalog.max_hours)
        lics = self.by_inst.get(inst, [])
        for lic in lics:
            r, row = self.masks[lic.id], self.rows[lic.id]
            row["active_hours"] = (active & r).bit_count()
            row["bridged_hours"] = (bridged & r).bit_count()
            row["unknown_hours"] = r.bit_count() - (seen & r).bit_count() - row["bridged_hours"]
        left = active | bridged  # the billed hours not decided yet
        if not left:
            return
        fixed: list[tuple[License, int]] = []
        for lic in _ordered(lics) if len(lics) > 1 else lics:
            mine = left & self.masks[lic.id]
            if not mine:
                continue
            left ^= mine
            if lic.model == "fixed":
                self.rows[lic.id]["fixed_hours"] += mine.bit_count()
                fixed.append((lic, mine))
            else:
                self._payg(inst, lic, mine)
        if left:
            self.unlicensed[inst] = left.bit_count()
        if fixed:
            declared = self.activity.declared.get(inst)
            if declared:
                for lid in self.overuse.flagged_bits(fixed, declared, self.m0, self.bits.n):
                    self.rows[lid]["flags"].add("over_capacity")

    def _payg(self, inst: str, lic: License, mine: int) -> None:
        pay = mine & ~self.down[lic.customer]  # a downgraded PAYG hour is not billed and not counted
        if not pay:
            return
        row = self.rows[lic.id]
        row["payg_hours"] += pay.bit_count()
        if pay & ~self.platform:
            row["flags"].add("no_platform_license")
        if lic.unit == "device_day":
            days = self.active_days[lic.id]
            for d in range(self.bits.n // 24):
                if pay >> (24 * d) & DAY_BITS:
                    days.add(self.m0 + d * DAY)
            return
        try:
            for entry, rate, count in self.pricer.priced_hours(lic, pay, self.m0, self.bits.n):
                self.lines[(lic.customer, lic.id, inst, entry.bundle, entry.bandwidth_mbps or 0,
                            entry.vservices or 0, rate.text)] += count
        except PricingError:
            if not self.tolerant:
                raise

    def device_days(self) -> dict[tuple[str, str], int]:
        out: dict[tuple[str, str], int] = defaultdict(int)
        for lic in self.licenses:
            if lic.model != "payg" or lic.unit != "device_day":
                continue
            assert lic.pack is not None
            if lic.day_counts == "assigned":
                days = _assigned_days(lic, self.catalog.customers[lic.customer].downgraded, self.m0, self.m1)
            else:
                days = len(self.active_days.get(lic.id, ()))
            out[(lic.customer, lic.pack)] += days
        return out


def _totals(lines: list[dict[str, Any]], rows: list[dict[str, Any]]) -> tuple[dict[str, str], str]:
    totals: dict[str, Decimal] = defaultdict(Decimal)
    for item in (*lines, *rows):
        totals[item["customer"]] += Decimal(item["amount"])
    return ({c: money_text(totals[c]) for c in sorted(totals)},
            money_text(sum(totals.values(), Decimal(0))))


def compute(activity: Activity, catalog: Catalog | Mapping[str, Any], month: str,
            chains: list[dict[str, Any]]) -> BillingResult:
    """The month's usage and invoice (billing-v1.md §7 shapes) from its activity; raises PricingError."""
    catalog = load_catalog(catalog)
    m = _walk(activity, catalog, month, tolerant=False)
    lines = [{"customer": c, "license": lid, "instance": inst, "bundle": bundle, "bandwidth_mbps": bw,
              "vservices": vs, "quantity": q, "price": price,
              "amount": money_text(round_half_up(q * Decimal(price))), "adjusts": None}
             for (c, lid, inst, bundle, bw, vs, price), q in sorted(m.lines.items(), key=lambda kv: kv[0])]
    device_days = []
    for (customer, pack), days in sorted(m.device_days().items()):
        if days == 0:
            continue  # no row for a pack without counted days
        rate = catalog.monthly[pack]
        months = -(-days // 31)
        device_days.append({"customer": customer, "pack": pack, "device_days": days, "months": months,
                            "price": rate.text, "amount": money_text(round_half_up(months * rate.price))})
    totals, total = _totals(lines, device_days)
    usage = _usage(m, chains)
    invoice = {"provider": catalog.provider, "month": month, "currency": catalog.currency,
               "lines": lines, "device_days": device_days, "totals": totals, "total": total}
    return BillingResult(usage, invoice)


def usage_despite_pricing(activity: Activity, catalog: Catalog | Mapping[str, Any], month: str,
                          chains: list[dict[str, Any]]) -> dict[str, Any]:
    """The usage document of a month whose hours some rate cannot price (§4: it has no invoice):
    its rows, flags and unlicensed hours do not depend on prices, and the collector's alerts
    (unlicensed, over_capacity) still need them."""
    return _usage(_walk(activity, load_catalog(catalog), month, tolerant=True), chains)


def _walk(activity: Activity, catalog: Catalog, month: str, tolerant: bool) -> _Month:
    m = _Month(activity, catalog, month, tolerant)
    for inst in sorted(activity.instances() | set(m.by_inst)):
        m.instance(inst)
    return m


def _usage(m: _Month, chains: list[dict[str, Any]]) -> dict[str, Any]:
    rows = [{**row, "flags": sorted(row["flags"])} for _, row in sorted(m.rows.items())]
    return {"provider": m.catalog.provider, "month": m.month, "rows": rows,
            "unlicensed": [{"instance": i, "hours": n} for i, n in sorted(m.unlicensed.items())],
            "chains": list(chains)}
