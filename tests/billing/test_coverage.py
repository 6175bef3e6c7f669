"""Licenses and coverage (billing-v1.md §3, §7 usage rows): which license decides a billed hour."""

import pytest

from billing import bill


def _lines(res):
    return {(x["license"], x["quantity"]) for x in res.invoice["lines"]}


def test_fixed_beats_payg_whatever_the_start(kit):
    a = kit.Agent()
    beats = kit.hourly(a, "X", "3 10:00", 3)
    cat = kit.catalog(kit.lic("SL-F", "X", "fixed", start="2026-10-01T00:00:00Z"),
                      kit.lic("SL-P", "X", start="3 00:00"))
    res = bill(beats, cat, kit.MONTH)
    assert kit.row(res.usage, "SL-F")["fixed_hours"] == 3
    assert kit.row(res.usage, "SL-P")["payg_hours"] == 0
    assert res.invoice["lines"] == [] and res.invoice["totals"] == {} and res.invoice["total"] == "0.00"


def test_latest_start_decides_among_payg(kit):
    a = kit.Agent()
    beats = kit.hourly(a, "X", "2 10:00", 2) + kit.hourly(a, "X", "6 10:00", 3)
    cat = kit.catalog(kit.lic("SL-A", "X", start="1 00:00"), kit.lic("SL-B", "X", start="5 00:00"))
    res = bill(beats, cat, kit.MONTH)
    assert _lines(res) == {("SL-A", 2), ("SL-B", 3)}
    assert kit.row(res.usage, "SL-A")["active_hours"] == 5  # classes count the whole period...
    assert kit.row(res.usage, "SL-A")["payg_hours"] == 2  # ...decisions only the hours it won


def test_latest_start_decides_among_fixed(kit):
    a = kit.Agent()
    beats = kit.hourly(a, "X", "6 10:00", 1)
    cat = kit.catalog(kit.lic("SL-A", "X", "fixed", start="5 00:00"),
                      kit.lic("SL-B", "X", "fixed", start="1 00:00"))
    res = bill(beats, cat, kit.MONTH)
    assert (kit.row(res.usage, "SL-A")["fixed_hours"], kit.row(res.usage, "SL-B")["fixed_hours"]) == (1, 0)


def test_same_start_greatest_id_wins(kit):
    a = kit.Agent()
    beats = kit.hourly(a, "X", "6 10:00", 2)
    cat = kit.catalog(kit.lic("SL-B", "X"), kit.lic("SL-A", "X"), kit.lic("SL-C", "X", customer="c2"))
    res = bill(beats, cat, kit.MONTH)
    assert _lines(res) == {("SL-C", 2)}
    assert list(res.invoice["totals"]) == ["c2"]


def test_an_hour_belongs_to_a_license_it_overlaps(kit):
    a = kit.Agent()
    beats = kit.hourly(a, "X", "2 09:00", 5)  # hours 09, 10, 11, 12, 13 active
    cat = kit.catalog(kit.lic("SL-1", "X", start="2 10:30", end="2 12:30"))
    res = bill(beats, cat, kit.MONTH)
    r = kit.row(res.usage, "SL-1")
    assert (r["active_hours"], r["unknown_hours"], r["payg_hours"]) == (3, 0, 3)  # hours 10, 11, 12
    assert res.usage["unlicensed"] == [{"instance": "X", "hours": 2}]  # hours 09 and 13


def test_license_end_is_exclusive(kit):
    a = kit.Agent()
    beats = kit.hourly(a, "X", "2 11:00", 2)
    res = bill(beats, kit.catalog(kit.lic("SL-1", "X", end="2 12:00")), kit.MONTH)
    assert kit.row(res.usage, "SL-1")["payg_hours"] == 1
    assert res.usage["unlicensed"] == [{"instance": "X", "hours": 1}]


def test_downgraded_payg_hours_are_not_billed_nor_counted(kit):
    a = kit.Agent()
    beats = kit.hourly(a, "X", "2 09:00", 4) + kit.hourly(a, "Y", "2 09:00", 4)
    customers = [{"id": "c1", "name": "Example GmbH",
                  "downgraded": [["2026-11-02T10:30:00Z", "2026-11-02T12:00:00Z"]]}]
    cat = kit.catalog(kit.lic("SL-P", "X"), kit.lic("SL-F", "Y", "fixed"), customers=customers)
    res = bill(beats, cat, kit.MONTH)
    p = kit.row(res.usage, "SL-P")
    assert (p["active_hours"], p["payg_hours"]) == (4, 2)  # hours 10 and 11 overlap the downgrade
    assert _lines(res) == {("SL-P", 2)}
    assert kit.row(res.usage, "SL-F")["fixed_hours"] == 4  # fixed terms are not downgraded


def test_open_downgrade_runs_to_the_end(kit):
    a = kit.Agent()
    beats = kit.hourly(a, "X", "2 09:00", 2) + kit.hourly(a, "X", "20 09:00", 2)
    customers = [{"id": "c1", "name": "E", "downgraded": [["2026-11-10T00:00:00Z", None]]}]
    res = bill(beats, kit.catalog(kit.lic("SL-P", "X"), customers=customers), kit.MONTH)
    assert kit.row(res.usage, "SL-P")["payg_hours"] == 2


def test_no_platform_license_is_flagged_and_still_billed(kit):
    a = kit.Agent()
    beats = kit.hourly(a, "X", "2 11:00", 2) + kit.hourly(a, "Y", "2 11:00", 1)
    platform = [{"id": "PL-1", "valid_from": "2026-01-01T00:00:00Z", "valid_to": "2026-11-02T12:00:00Z"}]
    cat = kit.catalog(kit.lic("SL-X", "X"), kit.lic("SL-Y", "Y"), platform_licenses=platform)
    res = bill(beats, cat, kit.MONTH)
    assert kit.row(res.usage, "SL-X")["flags"] == ["no_platform_license"]
    assert kit.row(res.usage, "SL-Y")["flags"] == []  # hour 11 belongs to PL-1
    assert _lines(res) == {("SL-X", 2), ("SL-Y", 1)}


def test_no_platform_license_only_for_billed_payg_hours(kit):
    # Decision: a downgraded hour is not billed, so it cannot raise the flag; fixed hours never do.
    a = kit.Agent()
    beats = kit.hourly(a, "X", "2 11:00", 1) + kit.hourly(a, "Y", "2 11:00", 1)
    customers = [{"id": "c1", "name": "E", "downgraded": [["2026-11-02T00:00:00Z", "2026-11-03T00:00:00Z"]]}]
    cat = kit.catalog(kit.lic("SL-X", "X"), kit.lic("SL-Y", "Y", "fixed"), platform_licenses=[],
                      customers=customers)
    res = bill(beats, cat, kit.MONTH)
    assert kit.row(res.usage, "SL-X")["flags"] == [] and kit.row(res.usage, "SL-Y")["flags"] == []


def test_unlicensed_instances_are_reported_never_priced(kit):
    a = kit.Agent()
    beats = kit.hourly(a, "Z", "2 10:00", 3) + kit.hourly(a, "W", "2 10:00", 2, state="stopped")
    res = bill(beats, kit.catalog(), kit.MONTH)
    assert res.usage["unlicensed"] == [{"instance": "Z", "hours": 3}]  # W was never billed
    assert res.usage["rows"] == [] and res.invoice["lines"] == []


def test_unlicensed_hours_include_bridged_ones(kit):
    a = kit.Agent()
    beats = [a.beat("2 10:10", kit.obs("Z")), a.beat("2 12:10", kit.obs("Z"))]
    res = bill(beats, kit.catalog(bridge=1), kit.MONTH)
    assert res.usage["unlicensed"] == [{"instance": "Z", "hours": 3}]


@pytest.mark.parametrize(("start", "end", "unknown"), [
    ("2026-10-01T00:00:00Z", None, 720),
    ("2026-11-29T00:00:00Z", None, 48),
    ("2026-10-01T00:00:00Z", "2026-11-01T00:30:00Z", 1),
    ("2026-11-30T23:59:59Z", "2026-12-05T00:00:00Z", 1),
])
def test_rows_for_every_license_overlapping_the_month(kit, start, end, unknown):
    res = bill([], kit.catalog(kit.lic("SL-1", "X", start=start, end=end)), kit.MONTH)
    assert res.usage["rows"] == [{"instance": "X", "license": "SL-1", "customer": "c1", "active_hours": 0,
                                  "bridged_hours": 0, "unknown_hours": unknown, "fixed_hours": 0,
                                  "payg_hours": 0, "flags": []}]


@pytest.mark.parametrize(("start", "end"), [
    ("2026-10-01T00:00:00Z", "2026-11-01T00:00:00Z"),
    ("2026-12-01T00:00:00Z", None),
])
def test_no_row_for_a_license_outside_the_month(kit, start, end):
    res = bill([], kit.catalog(kit.lic("SL-1", "X", start=start, end=end)), kit.MONTH)
    assert res.usage["rows"] == []
