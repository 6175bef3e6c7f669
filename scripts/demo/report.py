"""Readable tables of an invoice and of a month's instance hours."""

from collections.abc import Mapping, Sequence
from typing import Any


def table(rows: Sequence[Sequence[Any]], right: set[int] | None = None) -> str:
    """Plain aligned columns; the first row is the header; `right` = indexes aligned right."""
    cells = [[("" if c is None else str(c)) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    right = right or set()
    out = []
    for r in cells:
        out.append("  ".join(c.rjust(w) if i in right else c.ljust(w)
                             for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip())
    return "\n".join(out)


def invoice_table(inv: Mapping[str, Any], names: Mapping[str, str]) -> str:
    cur = inv.get("currency", "")
    rows: list[list[Any]] = [["CUSTOMER", "LICENSE", "INSTANCE", "CAPACITY", "HOURS", f"PRICE {cur}",
                              f"AMOUNT {cur}", "ADJUSTS"]]
    for ln in sorted(inv["lines"], key=lambda x: (x["customer"], x["license"], x["instance"])):
        cap = f"{ln['bundle']} {ln.get('bandwidth_mbps') or 0} Mbit/s {ln.get('vservices') or 0} vs"
        rows.append([names.get(ln["customer"], ln["customer"]), ln["license"], ln["instance"], cap,
                     ln["quantity"], ln["price"], ln["amount"], ln.get("adjusts") or ""])
    for dd in inv.get("device_days", []):
        rows.append([names.get(dd["customer"], dd["customer"]), f"pack {dd['pack']}",
                     f"{dd['device_days']} device-days", f"{dd['months']} month(s)", "", dd["price"],
                     dd["amount"], dd.get("adjusts") or ""])
    text = table(rows, right={4, 5, 6})
    totals = [[names.get(c, c), t] for c, t in sorted(inv.get("totals", {}).items())]
    if totals:
        text += "\n\n" + table([["CUSTOMER", f"TOTAL {cur}"], *totals], right={1})
    return text + f"\n\nTOTAL {inv.get('total')} {cur}"


def hours_table(usage: Mapping[str, Any], licensed: Mapping[str, str]) -> str:
    rows: list[list[Any]] = [["INSTANCE", "LICENSE", "ACTIVE HOURS", "SEEN HOURS"]]
    for inst in usage["instances"]:
        days = inst["days"].values()
        rows.append([inst["instance"], licensed.get(inst["instance"], "(unlicensed)"),
                     sum(d["active_hours"] for d in days), sum(d["seen_hours"] for d in days)])
    return table(rows, right={2, 3})
