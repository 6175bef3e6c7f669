"""An invoice (billing-v1.md §7 shape) as CSV rows or a readable PDF, one page per customer."""

import csv
import io
from collections.abc import Mapping
from typing import Any

COLUMNS = (
    "kind",
    "customer",
    "license",
    "instance",
    "pack",
    "bundle",
    "bandwidth_mbps",
    "vservices",
    "quantity",
    "device_days",
    "months",
    "price",
    "amount",
    "adjusts",
)


def csv_bytes(invoice: Mapping[str, Any]) -> bytes:
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for line in invoice["lines"]:
        w.writerow({"kind": "hours", **line})
    for row in invoice["device_days"]:
        w.writerow({"kind": "device_days", **row})
    for customer, total in sorted(invoice["totals"].items()):
        w.writerow({"kind": "customer_total", "customer": customer, "amount": total})
    w.writerow({"kind": "total", "amount": invoice["total"]})
    return out.getvalue().encode("utf-8")


def _latin1(text: Any) -> str:
    # The PDF core fonts are Latin-1; anything else is shown as '?' rather than failing the invoice.
    return str("" if text is None else text).encode("latin-1", "replace").decode("latin-1")


def pdf_bytes(invoice: Mapping[str, Any], customer_names: Mapping[str, str] | None = None) -> bytes:
    from fpdf import FPDF

    names = customer_names or {}
    pdf = FPDF(orientation="L", format="A4")
    pdf.set_auto_page_break(True, margin=15)
    cur = invoice["currency"]
    customers = sorted(
        set(invoice["totals"])
        | {x["customer"] for x in invoice["lines"]}
        | {x["customer"] for x in invoice["device_days"]}
    )
    if not customers:
        customers = [""]
    widths = (34, 30, 38, 44, 24, 30, 30, 40)
    for cust in customers:
        pdf.add_page()
        pdf.set_font("Helvetica", "B", 16)
        pdf.cell(
            0,
            10,
            _latin1(f"Invoice {invoice['month']} - {invoice['provider']}"),
            new_x="LMARGIN",
            new_y="NEXT",
        )
        pdf.set_font("Helvetica", "", 11)
        pdf.cell(0, 7, _latin1(f"Customer: {names.get(cust, cust)} ({cust})"), new_x="LMARGIN", new_y="NEXT")
        pdf.cell(0, 7, _latin1(f"Currency: {cur}"), new_x="LMARGIN", new_y="NEXT")
        pdf.ln(3)
        pdf.set_font("Helvetica", "B", 9)
        head = ("License", "Instance", "Capacity / pack", "Quantity", "Unit", "Price", "Amount", "Adjusts")
        for w, h in zip(widths, head, strict=True):
            pdf.cell(w, 7, h, border=1)
        pdf.ln()
        pdf.set_font("Helvetica", "", 9)
        for line in (x for x in invoice["lines"] if x["customer"] == cust):
            cap = f"{line['bundle']} {line['bandwidth_mbps']} Mbps {line['vservices']} vs"
            row = (
                line["license"],
                line["instance"],
                cap,
                line["quantity"],
                "hours",
                line["price"],
                line["amount"],
                line["adjusts"] or "",
            )
            for w, v in zip(widths, row, strict=True):
                pdf.cell(w, 6, _latin1(v), border=1)
            pdf.ln()
        for r in (x for x in invoice["device_days"] if x["customer"] == cust):
            row = (
                "",
                "",
                r["pack"],
                f"{r['device_days']} d = {r['months']}",
                "months",
                r["price"],
                r["amount"],
                r.get("adjusts") or "",
            )
            for w, v in zip(widths, row, strict=True):
                pdf.cell(w, 6, _latin1(v), border=1)
            pdf.ln()
        pdf.ln(3)
        pdf.set_font("Helvetica", "B", 11)
        pdf.cell(
            0,
            8,
            _latin1(f"Total {cust}: {invoice['totals'].get(cust, '0.00')} {cur}"),
            new_x="LMARGIN",
            new_y="NEXT",
        )
    return bytes(pdf.output())
