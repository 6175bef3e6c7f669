"""billing.compute's bitset walk against a straightforward per-hour reference of billing-v1.md §2-§5."""

from collections import defaultdict
from copy import deepcopy

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing import Activity, PricingError, load_catalog
from billing.compute import _Month, _ordered, bridged_hours, hour_range
from billing.pricing import OverUse, Pricer
from protocol.timefmt import format_time, month_bounds

MONTH = "2026-11"
M0, M1 = month_bounds(MONTH)
H = 3600


class Reference:
    """Hour by hour, with sets: the rules as the spec words them, slow and obvious."""

    def __init__(self, act: Activity, cat, month: str) -> None:
        m0, m1 = month_bounds(month)
        self.rows: dict[str, dict] = {}
        self.lines: dict[tuple, int] = defaultdict(int)
        self.unlicensed: dict[str, int] = {}
        self.days: dict[str, set[int]] = defaultdict(set)
        pricer = Pricer(cat)
        lics = [x for x in cat.licenses if x.start < m1 and (x.end is None or x.end > m0)]
        platform = {h for p in cat.platform_licenses for h in hour_range(p.valid_from, p.valid_to, m0, m1)}
        down = {c.id: {h for s, e in c.downgraded for h in hour_range(s, e, m0, m1)}
                for c in cat.customers.values()}
        for lic in lics:
            self.rows[lic.id] = {"active": 0, "bridged": 0, "unknown": 0, "fixed": 0, "payg": 0,
                                 "flags": set()}
        insts = set(act.active) | set(act.seen) | {x.instance for x in lics}
        for inst in insts:
            active = {h for h in act.active.get(inst, ()) if m0 <= h < m1}
            seen = {h for h in act.seen.get(inst, ()) if m0 <= h < m1} | active
            bridged = bridged_hours(active, seen, m1, cat.max_hours) if cat.gap_mode == "bridge" else set()
            mine = [x for x in lics if x.instance == inst]
            for lic in mine:
                r, row = set(hour_range(lic.start, lic.end, m0, m1)), self.rows[lic.id]
                row["active"], row["bridged"] = len(active & r), len(bridged & r)
                row["unknown"] = len(r - seen - bridged)
            fixed = {}
            for h in sorted(active | bridged):
                lic = next((x for x in _ordered(mine) if h in hour_range(x.start, x.end, m0, m1)), None)
                if lic is None:
                    self.unlicensed[inst] = self.unlicensed.get(inst, 0) + 1
                elif lic.model == "fixed":
                    self.rows[lic.id]["fixed"] += 1
                    fixed[h] = lic
                elif h not in down[lic.customer]:
                    row = self.rows[lic.id]
                    row["payg"] += 1
                    if h not in platform:
                        row["flags"].add("no_platform_license")
                    if lic.unit == "device_day":
                        self.days[lic.id].add(h - (h - m0) % 86400)
                    else:
                        e, rate = pricer.hour(lic, h)
                        self.lines[(lic.customer, lic.id, inst, e.bundle, e.bandwidth_mbps or 0,
                                    e.vservices or 0, rate.text)] += 1
            if fixed and act.declared.get(inst):
                for lid in OverUse(cat, pricer).flagged(fixed, act.declared[inst]):
                    self.rows[lid]["flags"].add("over_capacity")


def _fast(act: Activity, cat) -> dict:
    m = _Month(act, cat, MONTH)
    for inst in sorted(act.instances() | set(m.by_inst)):
        m.instance(inst)
    rows = {lid: {"active": r["active_hours"], "bridged": r["bridged_hours"], "unknown": r["unknown_hours"],
                  "fixed": r["fixed_hours"], "payg": r["payg_hours"], "flags": r["flags"]}
            for lid, r in m.rows.items()}
    return {"rows": rows, "lines": dict(m.lines), "unlicensed": m.unlicensed,
            "days": {k: v for k, v in m.active_days.items() if v}}


def _slow(act: Activity, cat) -> dict:
    r = Reference(act, cat, MONTH)
    return {"rows": r.rows, "lines": dict(r.lines), "unlicensed": r.unlicensed, "days": dict(r.days)}


HALF_HOURS = st.integers(-8, 120).map(lambda k: M0 + k * 1800) | st.integers(1420, 1448).map(
    lambda k: M0 + k * 1800)  # around the month's start and its end
HOURS = st.integers(-3, 60) | st.integers(700, 723)


def _hours(draw) -> set[int]:
    """Some hours in and around the month; or, as often, all the month's hours but those."""
    hours = {M0 + k * H for k in draw(st.sets(HOURS, max_size=40))}
    if draw(st.booleans()):
        hours = set(range(M0, M1, H)).symmetric_difference(hours)
    return hours


@st.composite
def scenarios(draw) -> tuple[Activity, dict, Activity]:
    insts = ["A", "B", "C"]
    licenses = []
    for i in range(draw(st.integers(1, 5))):
        start = draw(HALF_HOURS)
        end = draw(st.none() | HALF_HOURS.filter(lambda e, s=start: e > s))
        unit = draw(st.sampled_from(["hour", "hour", "device_day"]))
        # Mostly an entry in force before the month, then changes at hour or half-hour marks.
        froms = sorted(
            draw(st.sets(HALF_HOURS, max_size=2)) | ({M0 - H} if draw(st.integers(0, 4)) else set()))
        lic = {"id": f"L{i}", "customer": draw(st.sampled_from(["c1", "c2"])),
               "instance": draw(st.sampled_from(insts)), "model": draw(st.sampled_from(["payg", "fixed"])),
               "unit": unit, "start": format_time(start),
               "end": None if end is None else format_time(end),
               "capacity": [{"from": format_time(f), "bundle": draw(st.sampled_from(["basic", "pro"])),
                             "bandwidth_mbps": draw(st.sampled_from([100, 1000, 5000, 20000]))}
                            for f in froms]}
        if unit == "device_day":
            lic.update(pack="p", day_counts=draw(st.sampled_from(["assigned", "active"])))
        licenses.append(lic)
    downgraded = [[format_time(s), format_time(s + draw(st.integers(1, 60)) * 1800)]
                  for s in draw(st.lists(HALF_HOURS, max_size=2))]
    bridge = draw(st.booleans())
    pl_from = draw(st.sampled_from([M0 - 86400, M0 + 5 * 1800, M0 + 40 * H]))
    catalog = {
        "provider": {"id": "p", "name": "P", "currency": "EUR"},
        "policy": {"gaps": {"mode": "bridge", "max_hours": draw(st.integers(1, 4))}} if bridge else {},
        "bundles": ["basic", "pro"],
        "platform_licenses": [{"id": "PL", "valid_from": format_time(pl_from), "valid_to": None}],
        "customers": [{"id": "c1", "name": "one", "downgraded": downgraded}, {"id": "c2", "name": "two"}],
        "licenses": licenses,
        "rates": {"hourly": [{"bundle": "basic", "max_bandwidth_mbps": 1000, "price": "0.0450"},
                             {"bundle": "basic", "max_bandwidth_mbps": 9999, "price": "0.0300"},
                             {"bundle": "pro", "max_bandwidth_mbps": 1000, "price": "0.0450"},
                             {"bundle": "pro", "max_bandwidth_mbps": 9999, "price": "0.0900"}],
                  "monthly": [{"pack": "p", "price": "10.00"}]},
    }
    act = Activity()
    for inst in insts:
        act.seen[inst], act.active[inst] = _hours(draw), _hours(draw)
    keys = st.tuples(st.sampled_from(["basic", "pro", "gold", None]), st.sampled_from([None, 300, 800]),
                     st.none())
    act.declared = {inst: {draw(keys): draw(st.lists(HALF_HOURS.map(lambda t: t + 59), max_size=8))}
                    for inst in insts}
    # The same hours as bitsets based 10 hours before the month, for a random part of the instances.
    bits = Activity(declared=act.declared, bits_base=M0 - 10 * H)
    for inst in insts:
        form = draw(st.sampled_from(["sets", "bits", "both"]))
        for src, dst_sets, dst_bits in ((act.active, bits.active, bits.active_bits),
                                        (act.seen, bits.seen, bits.seen_bits)):
            hours = src[inst]
            if form != "bits":
                dst_sets[inst] = set(hours)
            if form != "sets":
                dst_bits[inst] = sum(1 << ((h - bits.bits_base) // H) for h in hours if h >= bits.bits_base)
                if form == "bits":  # hours before the base cannot be bits: those stay sets
                    dst_sets[inst] = {h for h in hours if h < bits.bits_base}
    return act, catalog, bits


def _outcome(fn, act, cat):
    try:
        return fn(act, cat)
    except PricingError:
        return "PricingError"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_bitset_walk_matches_the_per_hour_reference(case):
    act, doc, bits = case
    cat = load_catalog(deepcopy(doc))
    expected = _outcome(_slow, act, cat)
    assert _outcome(_fast, act, cat) == expected
    assert _outcome(_fast, bits, cat) == expected  # the bitset form of the same hours


def test_bits_base_must_be_an_hour_start():
    act = Activity(active_bits={"A": 1}, bits_base=M0 + 60)
    cat = load_catalog({"provider": {"id": "p", "name": "P", "currency": "EUR"}, "bundles": [],
                        "platform_licenses": [], "customers": [], "licenses": [],
                        "rates": {"hourly": [], "monthly": []}})
    with pytest.raises(ValueError):
        _fast(act, cat)
