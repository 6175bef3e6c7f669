"""Month close and late data (billing-v1.md §6); comparing documents as sets (§7)."""

from decimal import Decimal

from billing import adjustment_lines, bill, same_invoice, same_usage, with_adjustments


def test_late_heartbeats_raise_the_quantity(kit):
    a = kit.Agent()
    on_time = kit.hourly(a, "X", "2 00:00", 10)
    late = kit.hourly(a, "X", "3 00:00", 1)
    cat = kit.catalog(kit.lic("SL-1", "X"))
    frozen = bill(on_time, cat, kit.MONTH).invoice  # 10 x 0.0450 = 0.45
    current = bill(on_time + late, cat, kit.MONTH).invoice  # 11 x 0.0450 = 0.495 -> 0.50
    adj = adjustment_lines(current, frozen, kit.MONTH)
    assert adj == {"lines": [{"customer": "c1", "license": "SL-1", "instance": "X", "bundle": "pro",
                              "bandwidth_mbps": 500, "vservices": 10, "quantity": 1, "price": "0.0450",
                              "amount": "0.05", "adjusts": "2026-11"}], "device_days": []}


def test_adjusted_amount_reconciles_to_the_cent(kit):
    # Decision: the adjustment's amount is current minus frozen amount, so the customer pays what the
    # recomputed month says: 2 x 0.0450 = 0.09 frozen, 3 x 0.0450 = 0.135 -> 0.14 now; +0.05, not +0.04.
    a = kit.Agent()
    beats = kit.hourly(a, "X", "2 00:00", 3)
    cat = kit.catalog(kit.lic("SL-1", "X"))
    frozen, current = bill(beats[:2], cat, kit.MONTH).invoice, bill(beats, cat, kit.MONTH).invoice
    (line,) = adjustment_lines(current, frozen, kit.MONTH)["lines"]
    assert (line["quantity"], line["amount"]) == (1, "0.05")
    assert Decimal(frozen["total"]) + Decimal(line["amount"]) == Decimal(current["total"])


def test_late_fork_lowers_the_quantity(kit):
    a = kit.Agent()
    beats = kit.hourly(a, "X", "2 00:00", 4)
    cat = kit.catalog(kit.lic("SL-1", "X"))
    frozen = bill(beats, cat, kit.MONTH).invoice
    # A restored snapshot signs seq 2 again: every copy of seq 2 is quarantined, and seq 3 no longer
    # follows an unforked seq 2, so it stands. Hour 01 loses its only evidence.
    twin = kit.Agent()
    twin.key = a.key
    forked = twin.beat("2 01:20", kit.obs("X"), seq=2, prev=beats[0].digest)
    current = bill([*beats, forked], cat, kit.MONTH).invoice
    (line,) = adjustment_lines(current, frozen, kit.MONTH)["lines"]
    assert (line["quantity"], line["amount"], line["adjusts"]) == (-1, "-0.04", "2026-11")


def test_new_and_vanished_lines_and_device_days(kit):
    a = kit.Agent()
    dd = kit.lic("SL-D", "D", unit="device_day", capacity=[], pack="professional", day_counts="active")
    cat = kit.catalog(kit.lic("SL-1", "X"), kit.lic("SL-2", "Y"), dd)
    x = kit.hourly(a, "X", "2 00:00", 2)
    y = kit.hourly(a, "Y", "2 00:00", 1)
    d = kit.hourly(a, "D", "2 00:00", 1) + kit.hourly(a, "D", "3 00:00", 1)
    frozen = bill(x + d[:1], cat, kit.MONTH).invoice
    current = bill(y + d, cat, kit.MONTH).invoice
    adj = adjustment_lines(current, frozen, kit.MONTH)
    assert {(x["license"], x["quantity"], x["amount"]) for x in adj["lines"]} == {
        ("SL-1", -2, "-0.09"), ("SL-2", 1, "0.05")}
    assert adj["device_days"] == [{"customer": "c1", "pack": "professional", "device_days": 1, "months": 0,
                                   "price": "12.00", "amount": "0.00", "adjusts": "2026-11"}]


def test_no_difference_no_adjustment(kit):
    a = kit.Agent()
    res = bill(kit.hourly(a, "X", "2 00:00", 2), kit.catalog(kit.lic("SL-1", "X")), kit.MONTH)
    assert adjustment_lines(res.invoice, res.invoice, kit.MONTH) == {"lines": [], "device_days": []}


def test_with_adjustments_recomputes_totals(kit):
    a = kit.Agent()
    cat = kit.catalog(kit.lic("SL-1", "X"), kit.lic("SL-2", "Y", customer="c2"))
    nov = kit.hourly(a, "X", "2 00:00", 10)
    frozen = bill(nov, cat, kit.MONTH).invoice
    current = bill(nov + kit.hourly(a, "X", "3 00:00", 1), cat, kit.MONTH).invoice
    adj = adjustment_lines(current, frozen, kit.MONTH)
    dec = bill(kit.hourly(a, "Y", "2026-12-02T00:00:00Z", 2), cat, "2026-12").invoice
    out = with_adjustments(dec, [adj])
    assert len(out["lines"]) == 2 and out["month"] == "2026-12"
    assert out["totals"] == {"c1": "0.05", "c2": "0.09"} and out["total"] == "0.14"
    assert dec["totals"] == {"c2": "0.09"}  # the input is not changed


def test_same_invoice_ignores_order_only(kit):
    a = kit.Agent()
    beats = kit.hourly(a, "X", "2 00:00", 2) + kit.hourly(a, "Y", "2 00:00", 3)
    inv = bill(beats, kit.catalog(kit.lic("SL-1", "X"), kit.lic("SL-2", "Y")), kit.MONTH).invoice
    shuffled = {**inv, "lines": list(reversed(inv["lines"]))}
    assert same_invoice(inv, shuffled)
    changed = {**inv, "lines": [{**inv["lines"][0], "amount": "0.10"}, *inv["lines"][1:]]}
    assert not same_invoice(inv, changed)
    assert not same_invoice(inv, {**inv, "total": "0.24"})
    assert not same_invoice(inv, {k: v for k, v in inv.items() if k != "currency"})
    assert not same_invoice(inv, {**inv, "lines": inv["lines"] + inv["lines"][:1]})  # a multiset


def test_same_usage_ignores_order_only(kit):
    a, b = kit.Agent(), kit.Agent()
    beats = kit.hourly(a, "X", "2 00:00", 2) + kit.hourly(b, "Y", "2 00:00", 3)
    use = bill(beats, kit.catalog(kit.lic("SL-1", "X"), kit.lic("SL-2", "Y")), kit.MONTH).usage
    assert same_usage(use, {**use, "rows": use["rows"][::-1], "chains": use["chains"][::-1]})
    assert not same_usage(use, {**use, "chains": use["chains"][:1]})
    assert not same_usage(use, {**use, "rows": [{**use["rows"][0], "flags": ["over_capacity"]},
                                                *use["rows"][1:]]})
