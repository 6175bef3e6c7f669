"""Late data after close (billing-v1.md §6) and document comparison (order carries no meaning, §7)."""

import json
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from billing.money import money_text

LINE_ID = ("customer", "license", "instance", "bundle", "bandwidth_mbps", "vservices", "price")
ROW_ID = ("customer", "pack", "price")


def _index(items: Sequence[Mapping[str, Any]],
           ident: tuple[str, ...]) -> dict[tuple[object, ...], Mapping[str, Any]]:
    out: dict[tuple[object, ...], Mapping[str, Any]] = {}
    for item in items:
        if item.get("adjusts") is not None:
            continue  # a month's own result carries no adjustment lines; never re-adjust one
        out[tuple(item[k] for k in ident)] = item
    return out


def _diff(current: Sequence[Mapping[str, Any]], frozen: Sequence[Mapping[str, Any]],
          ident: tuple[str, ...], counts: tuple[str, ...], month: str) -> list[dict[str, Any]]:
    cur, old = _index(current, ident), _index(frozen, ident)
    out: list[dict[str, Any]] = []
    for key in sorted(cur.keys() | old.keys(), key=lambda k: json.dumps(k)):
        a, b = cur.get(key), old.get(key)
        diff = {c: (a[c] if a else 0) - (b[c] if b else 0) for c in counts}
        # The difference of the amounts, not the amount of the difference: frozen + adjustments
        # then equals the current result to the cent, whatever the half-up rounding did.
        amount = Decimal(a["amount"] if a else 0) - Decimal(b["amount"] if b else 0)
        if all(v == 0 for v in diff.values()) and amount == 0:
            continue
        out.append({**dict(zip(ident, key, strict=True)), **diff, "amount": money_text(amount),
                    "adjusts": month})
    return out


def adjustment_lines(current: Mapping[str, Any], frozen: Mapping[str, Any], month: str) -> dict[str, Any]:
    """Adjustment lines and device-day rows of a closed month: current minus frozen, zeros omitted."""
    lines = _diff(current["lines"], frozen["lines"], LINE_ID, ("quantity",), month)
    rows = _diff(current["device_days"], frozen["device_days"], ROW_ID, ("device_days", "months"), month)
    order = ("customer", "license", "instance", "bundle", "bandwidth_mbps", "vservices", "quantity",
             "price", "amount", "adjusts")
    row_order = ("customer", "pack", "device_days", "months", "price", "amount", "adjusts")
    return {"lines": [{k: line[k] for k in order} for line in lines],
            "device_days": [{k: row[k] for k in row_order} for row in rows]}


def with_adjustments(invoice: Mapping[str, Any], adjustments: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The first open month's invoice with the adjustment lines and rows of closed months added."""
    lines = [dict(x) for x in invoice["lines"]]
    rows = [dict(x) for x in invoice["device_days"]]
    for adj in adjustments:
        lines.extend(dict(x) for x in adj["lines"])
        rows.extend(dict(x) for x in adj["device_days"])
    totals: dict[str, Decimal] = defaultdict(Decimal)
    for item in (*lines, *rows):
        totals[item["customer"]] += Decimal(item["amount"])
    return {**invoice, "lines": lines, "device_days": rows,
            "totals": {c: money_text(totals[c]) for c in sorted(totals)},
            "total": money_text(sum(totals.values(), Decimal(0)))}


def _bag(items: Sequence[Any]) -> Counter[str]:
    return Counter(json.dumps(x, sort_keys=True, separators=(",", ":")) for x in items)


def _same(a: Mapping[str, Any], b: Mapping[str, Any], as_sets: tuple[str, ...]) -> bool:
    if a.keys() != b.keys():
        return False
    for k in a:
        if k in as_sets:
            if not isinstance(a[k], list) or not isinstance(b[k], list) or _bag(a[k]) != _bag(b[k]):
                return False
        elif _bag([a[k]]) != _bag([b[k]]):
            return False
    return True


def same_invoice(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Equal invoices: lines and device-day rows compared as sets (their order carries no meaning),
    a device-day row of no day and no amount the same as none (_without_empty_rows)."""
    return _same(_without_empty_rows(a), _without_empty_rows(b), ("lines", "device_days"))


def _without_empty_rows(inv: Mapping[str, Any]) -> Mapping[str, Any]:
    """The invoice without its device-day rows of 0 days, 0 months and a zero amount, and without
    a 0.00 total left with no line or row. billing-v1.md §5 says "per (customer, pack)" without
    saying which pairs: a collector may write a row for a pack whose licenses counted no day
    (this one writes none), and neither changes an amount."""
    rows = inv.get("device_days")
    if not isinstance(rows, list) or not any(_empty_row(r) for r in rows):
        return inv
    kept = [r for r in rows if not _empty_row(r)]
    lines = inv.get("lines")
    items = [*(lines if isinstance(lines, list) else []), *kept]
    billed = {x.get("customer") for x in items if isinstance(x, dict)}
    # only the customers whose empty rows were dropped lose a 0.00 total: another customer's
    # total without rows is no such case, and stays to be compared
    emptied = {r.get("customer") for r in rows if _empty_row(r)} - billed
    totals = inv.get("totals")
    if isinstance(totals, dict):
        totals = {c: t for c, t in totals.items() if c not in emptied or not _zero(t)}
    return {**inv, "device_days": kept, "totals": totals}


def _empty_row(row: Any) -> bool:
    if not isinstance(row, dict):
        return False
    days, months = row.get("device_days"), row.get("months")
    return type(days) is int and type(months) is int and days == months == 0 and _zero(row.get("amount"))


def _zero(text: Any) -> bool:
    try:
        return isinstance(text, str) and Decimal(text) == 0
    except ArithmeticError:
        return False


def same_usage(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Equal usage documents: rows, unlicensed instances and chains compared as sets."""
    return _same(a, b, ("rows", "unlicensed", "chains"))
