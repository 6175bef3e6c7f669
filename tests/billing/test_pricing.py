"""Hourly pricing (billing-v1.md §3 capacity, §4 rates and lines) and fixed-term over-use."""

import pytest

from billing import PricingError, bill


def _lines(res):
    return sorted((x["bundle"], x["bandwidth_mbps"], x["vservices"], x["quantity"], x["price"], x["amount"])
                  for x in res.invoice["lines"])


def test_line_shape_price_as_written_and_half_up_rounding(kit):
    a = kit.Agent()
    res = bill(kit.hourly(a, "X", "2 00:00", 11), kit.catalog(kit.lic("SL-1", "X")), kit.MONTH)
    # 11 x 0.0450 = 0.495, half up: 0.50 (banker's rounding would give 0.50 too; see 0.0250 below)
    assert res.invoice["lines"] == [{"customer": "c1", "license": "SL-1", "instance": "X", "bundle": "pro",
                                     "bandwidth_mbps": 500, "vservices": 10, "quantity": 11,
                                     "price": "0.0450", "amount": "0.50", "adjusts": None}]
    assert res.invoice["totals"] == {"c1": "0.50"} and res.invoice["total"] == "0.50"
    assert res.invoice["currency"] == "EUR" and res.invoice["provider"] == "acme"


def test_half_up_not_half_even(kit):
    rates = {"hourly": [{"bundle": "pro", "max_bandwidth_mbps": 1000, "price": "0.0250"}], "monthly": []}
    a = kit.Agent()
    res = bill(kit.hourly(a, "X", "2 00:00", 1), kit.catalog(kit.lic("SL-1", "X"), rates=rates), kit.MONTH)
    assert res.invoice["lines"][0]["amount"] == "0.03"  # 0.025: half-even would say 0.02


@pytest.mark.parametrize(("bundle", "bw", "price", "line_bw", "amount"), [
    ("pro", 1000, "0.0450", 1000, "0.09"),  # at the tier's maximum
    ("pro", 1001, "0.0900", 1001, "0.18"),  # the next tier up
    ("basic", 100, "0.0100", 100, "0.02"),
    ("basic", None, "0.0100", 0, "0.02"),  # a missing bandwidth counts as 0
])
def test_rate_is_the_smallest_tier_at_or_above(kit, bundle, bw, price, line_bw, amount):
    a = kit.Agent()
    cat = kit.catalog(kit.lic("SL-1", "X", capacity=[kit.cap("1 00:00", bundle, bw, None)]))
    res = bill(kit.hourly(a, "X", "2 00:00", 2), cat, kit.MONTH)
    assert _lines(res) == [(bundle, line_bw, 0, 2, price, amount)]  # a missing vservices counts as 0


def test_missing_rate_is_an_error_naming_license_and_capacity(kit):
    a = kit.Agent()
    cat = kit.catalog(kit.lic("SL-9", "X", capacity=[kit.cap("1 00:00", "enterprise", 20000, 5)]))
    with pytest.raises(PricingError) as err:
        bill(kit.hourly(a, "X", "2 00:00", 1), cat, kit.MONTH)
    assert err.value.license == "SL-9" and err.value.capacity["bandwidth_mbps"] == 20000
    assert "SL-9" in str(err.value)
    assert err.value.capacity["from"] == f"{kit.MONTH}-01T00:00:00Z"  # a time, not epoch seconds


def test_missing_rate_matters_only_for_payg_hours(kit):
    a = kit.Agent()
    cap = [kit.cap("1 00:00", "enterprise", 20000, 5)]
    cat = kit.catalog(kit.lic("SL-F", "X", "fixed", capacity=cap), kit.lic("SL-P", "Y", capacity=cap))
    res = bill(kit.hourly(a, "X", "2 00:00", 3), cat, kit.MONTH)  # Y never ran: nothing to price
    assert kit.row(res.usage, "SL-F")["fixed_hours"] == 3


def test_payg_hour_before_any_capacity_entry_is_an_error(kit):
    a = kit.Agent()
    cat = kit.catalog(kit.lic("SL-1", "X", capacity=[kit.cap("3 00:00")]))
    with pytest.raises(PricingError):
        bill(kit.hourly(a, "X", "2 00:00", 1), cat, kit.MONTH)


def test_capacity_change_inside_an_hour_takes_the_highest_price(kit):
    a = kit.Agent()
    up = [kit.cap("2026-10-01T00:00:00Z", "basic", 100, 5), kit.cap("2 10:30", "pro", 500, 10)]
    res = bill(kit.hourly(a, "X", "2 09:00", 3), kit.catalog(kit.lic("SL-1", "X", capacity=up)), kit.MONTH)
    assert _lines(res) == [("basic", 100, 5, 1, "0.0100", "0.01"), ("pro", 500, 10, 2, "0.0450", "0.09")]
    down = [kit.cap("2026-10-01T00:00:00Z", "pro", 500, 10), kit.cap("2 10:30", "basic", 100, 5)]
    b = kit.Agent()
    res = bill(kit.hourly(b, "X", "2 09:00", 3), kit.catalog(kit.lic("SL-1", "X", capacity=down)), kit.MONTH)
    assert _lines(res) == [("basic", 100, 5, 1, "0.0100", "0.01"), ("pro", 500, 10, 2, "0.0450", "0.09")]


def test_equal_prices_the_later_entry_wins(kit):
    a = kit.Agent()
    caps = [kit.cap("2026-10-01T00:00:00Z", "pro", 500, 10), kit.cap("2 10:30", "pro", 600, 20)]
    res = bill(kit.hourly(a, "X", "2 09:00", 2), kit.catalog(kit.lic("SL-1", "X", capacity=caps)), kit.MONTH)
    assert _lines(res) == [("pro", 500, 10, 1, "0.0450", "0.05"), ("pro", 600, 20, 1, "0.0450", "0.05")]


def test_only_entries_in_force_inside_the_license_period_count(kit):
    a = kit.Agent()
    caps = [kit.cap("2026-10-01T00:00:00Z", "pro", 500, 10), kit.cap("2 10:15", "basic", 100, 5)]
    cat = kit.catalog(kit.lic("SL-1", "X", start="2 10:30", capacity=caps))
    res = bill(kit.hourly(a, "X", "2 10:00", 1), cat, kit.MONTH)
    assert _lines(res) == [("basic", 100, 5, 1, "0.0100", "0.01")]  # pro ended before 10:30


def test_lines_split_by_customer_license_and_capacity(kit):
    a = kit.Agent()
    beats = kit.hourly(a, "X", "2 00:00", 2) + kit.hourly(a, "Y", "2 00:00", 3)
    cat = kit.catalog(kit.lic("SL-1", "X"), kit.lic("SL-2", "Y", customer="c2"))
    res = bill(beats, cat, kit.MONTH)
    assert {(x["customer"], x["license"], x["quantity"]) for x in res.invoice["lines"]} == {
        ("c1", "SL-1", 2), ("c2", "SL-2", 3)}
    assert res.invoice["totals"] == {"c1": "0.09", "c2": "0.14"} and res.invoice["total"] == "0.23"


# Fixed-term over-use: the fixed license's entry is basic / 100 Mbit/s / 5 vservices.
FIXED = [{"from": "2026-10-01T00:00:00Z", "bundle": "basic", "bandwidth_mbps": 100, "vservices": 5}]


@pytest.mark.parametrize(("declared", "flagged"), [
    ({"bundle": "basic", "bandwidth_mbps": 100, "vservices": 5}, False),
    ({"bundle": "pro"}, True),  # a higher bundle
    ({"bundle": "ultra"}, True),  # an unknown bundle ranks above all
    ({"bundle": "basic", "bandwidth_mbps": 101}, True),
    ({"vservices": 6}, True),
    ({"bandwidth_mbps": 50, "vservices": 5}, False),
    ({}, False),
    (None, False),
])
def test_over_capacity(kit, declared, flagged):
    a = kit.Agent()
    beats = [a.beat("2 10:10", kit.obs("X", capacity=declared))]
    res = bill(beats, kit.catalog(kit.lic("SL-F", "X", "fixed", capacity=FIXED)), kit.MONTH)
    assert kit.row(res.usage, "SL-F")["flags"] == (["over_capacity"] if flagged else [])


def test_over_capacity_absent_members_are_not_compared(kit):
    a = kit.Agent()
    bare = [{"from": "2026-10-01T00:00:00Z", "vservices": 5}]
    beats = [a.beat("2 10:10", kit.obs("X", capacity={"bundle": "enterprise", "bandwidth_mbps": 10000}))]
    res = bill(beats, kit.catalog(kit.lic("SL-F", "X", "fixed", capacity=bare)), kit.MONTH)
    assert kit.row(res.usage, "SL-F")["flags"] == []


def test_over_capacity_uses_the_entry_in_force_at_the_observation(kit):
    caps = [*FIXED, {"from": "2026-11-02T10:30:00Z", "bundle": "pro", "bandwidth_mbps": 500, "vservices": 10}]
    cat = kit.catalog(kit.lic("SL-F", "X", "fixed", capacity=caps))
    a = kit.Agent()
    late = bill([a.beat("2 10:40", kit.obs("X", capacity={"bundle": "pro"}))], cat, kit.MONTH)
    assert kit.row(late.usage, "SL-F")["flags"] == []
    b = kit.Agent()
    early = bill([b.beat("2 10:20", kit.obs("X", capacity={"bundle": "pro"}))], cat, kit.MONTH)
    assert kit.row(early.usage, "SL-F")["flags"] == ["over_capacity"]


def test_over_capacity_counts_any_observation_inside_a_fixed_hour(kit):
    a = kit.Agent()
    beats = [a.beat("2 10:10", kit.obs("X")), a.beat("2 10:40", kit.obs("X", "stopped", {"bundle": "pro"}))]
    res = bill(beats, kit.catalog(kit.lic("SL-F", "X", "fixed", capacity=FIXED)), kit.MONTH)
    assert kit.row(res.usage, "SL-F")["flags"] == ["over_capacity"]


def test_over_capacity_only_inside_fixed_hours(kit):
    a = kit.Agent()
    beats = [a.beat("2 10:10", kit.obs("X", "stopped", {"bundle": "pro"})),  # inactive hour: not billed
             a.beat("3 10:10", kit.obs("X", capacity={"bundle": "pro"}))]  # a PAYG hour
    cat = kit.catalog(kit.lic("SL-F", "X", "fixed", capacity=FIXED, end="3 00:00"),
                      kit.lic("SL-P", "X", start="3 00:00"))
    res = bill(beats, cat, kit.MONTH)
    assert kit.row(res.usage, "SL-F")["flags"] == [] and kit.row(res.usage, "SL-P")["flags"] == []
