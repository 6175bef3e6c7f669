"""Device-day pricing (billing-v1.md §5): assigned and active day counts, months rounded up."""

import pytest

from billing import bill


def dd(id, instance, start="1 00:00", end=None, counts="assigned", customer="c1", model="payg", kit=None):
    return kit.lic(id, instance, model, "device_day", start=start, end=end, capacity=[], customer=customer,
                   pack="professional", day_counts=counts)


def test_35_device_days_are_2_months(kit):
    cat = kit.catalog(dd("SL-1", "X", kit=kit), dd("SL-2", "Y", start="26 00:00", kit=kit))
    res = bill([], cat, kit.MONTH)  # assigned days need no evidence: 30 + 5
    assert res.invoice["device_days"] == [{"customer": "c1", "pack": "professional", "device_days": 35,
                                           "months": 2, "price": "12.00", "amount": "24.00"}]
    assert res.invoice["totals"] == {"c1": "24.00"} and res.invoice["total"] == "24.00"
    assert res.invoice["lines"] == []


@pytest.mark.parametrize(("starts", "days", "months"), [
    (["1 00:00"], 30, 1),
    (["1 00:00", "30 00:00"], 31, 1),
    (["1 00:00", "29 00:00"], 32, 2),
])
def test_months_are_device_days_over_31_rounded_up(kit, starts, days, months):
    cat = kit.catalog(*(dd(f"SL-{k}", f"X{k}", start=s, kit=kit) for k, s in enumerate(starts)))
    row = bill([], cat, kit.MONTH).invoice["device_days"][0]
    assert (row["device_days"], row["months"]) == (days, months)


def test_assigned_day_belongs_when_it_overlaps_the_period(kit):
    cat = kit.catalog(dd("SL-1", "X", start="3 10:00", end="5 00:01", kit=kit))
    assert bill([], cat, kit.MONTH).invoice["device_days"][0]["device_days"] == 3  # Nov 3, 4 and 5


def test_assigned_days_wholly_inside_a_downgrade_do_not_count(kit):
    customers = [{"id": "c1", "name": "E", "downgraded": [["2026-11-10T06:30:00Z", "2026-11-12T00:00:00Z"]]}]
    cat = kit.catalog(dd("SL-1", "X", kit=kit), customers=customers)
    assert bill([], cat, kit.MONTH).invoice["device_days"][0]["device_days"] == 29  # only Nov 11 is out


def test_touching_downgrades_cover_a_day_together(kit):
    # Decision: downgraded periods are merged, so a day covered by two touching periods is out.
    customers = [{"id": "c1", "name": "E", "downgraded": [["2026-11-10T00:00:00Z", "2026-11-10T12:00:00Z"],
                                                        ["2026-11-10T12:00:00Z", "2026-11-11T00:00:00Z"]]}]
    cat = kit.catalog(dd("SL-1", "X", kit=kit), customers=customers)
    assert bill([], cat, kit.MONTH).invoice["device_days"][0]["device_days"] == 29


def test_active_days_hold_a_payg_hour(kit):
    a = kit.Agent()
    beats = kit.hourly(a, "X", "2 10:00", 2) + kit.hourly(a, "X", "5 23:00", 1)
    beats += kit.hourly(a, "X", "7 10:00", 1, state="stopped")
    res = bill(beats, kit.catalog(dd("SL-1", "X", counts="active", kit=kit)), kit.MONTH)
    assert res.invoice["device_days"][0]["device_days"] == 2
    assert kit.row(res.usage, "SL-1")["payg_hours"] == 3  # payg_hours counts device-day licenses too


def test_active_days_count_bridged_hours(kit):
    a = kit.Agent()
    beats = [a.beat("7 23:10", kit.obs("X")), a.beat("9 00:10", kit.obs("X"))]  # all of Nov 8 unknown
    cat = kit.catalog(dd("SL-1", "X", counts="active", kit=kit), bridge=24)
    assert bill(beats, cat, kit.MONTH).invoice["device_days"][0]["device_days"] == 3
    cat = kit.catalog(dd("SL-1", "X", counts="active", kit=kit), bridge=23)
    assert bill(beats, cat, kit.MONTH).invoice["device_days"][0]["device_days"] == 2


def test_active_days_leave_out_downgraded_hours(kit):
    a = kit.Agent()
    beats = kit.hourly(a, "X", "15 10:00", 3) + kit.hourly(a, "X", "16 10:00", 1)
    customers = [{"id": "c1", "name": "E", "downgraded": [["2026-11-15T00:00:00Z", "2026-11-16T00:00:00Z"]]}]
    res = bill(beats, kit.catalog(dd("SL-1", "X", counts="active", kit=kit), customers=customers), kit.MONTH)
    assert res.invoice["device_days"][0]["device_days"] == 1
    assert kit.row(res.usage, "SL-1")["payg_hours"] == 1


def test_rows_per_customer_and_pack(kit):
    cat = kit.catalog(dd("SL-1", "X", kit=kit), dd("SL-2", "Y", start="21 00:00", customer="c2", kit=kit),
                      dd("SL-3", "Z", model="fixed", kit=kit))  # fixed terms are not priced here
    rows = bill([], cat, kit.MONTH).invoice["device_days"]
    assert [(r["customer"], r["device_days"], r["amount"]) for r in rows] == [("c1", 30, "12.00"),
                                                                              ("c2", 10, "12.00")]


def test_no_row_without_counted_days(kit):
    res = bill([], kit.catalog(dd("SL-1", "X", counts="active", kit=kit)), kit.MONTH)
    assert res.invoice["device_days"] == [] and res.invoice["totals"] == {}
