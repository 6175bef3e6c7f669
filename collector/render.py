"""An invoice (billing-v1.md §7 shape) as CSV rows or a readable PDF, one page per customer."""

import csv
import io
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from protocol.timefmt import format_time, month_bounds

log = logging.getLogger(__name__)
# fontTools' subsetter logs ~37 INFO lines a PDF (its timings); in the service's journal any viewer
# downloading invoices buried the event= lines under them
logging.getLogger("fontTools").setLevel(logging.WARNING)

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
    "currency",  # every row's: a CSV taken into accounting lost the invoice's currency
    # Every row's too (appended, so the columns before keep their places): a CSV opened in a
    # spreadsheet had lost its file name, and with it whose, which month and whether it is final
    "customer_name",
    "provider",
    "month",
    "document",  # invoice (a closed month) or estimate (an open one: its amounts still change)
)


# Catalog text (ids, bundle names) that a spreadsheet would run as a formula when the CSV is opened
# (OWASP "CSV injection"): such a cell gets a leading apostrophe. Amounts are never touched (a
# negative adjustment starts with '-'); the JSON invoice keeps every id exactly.
_TEXT = ("customer", "license", "instance", "pack", "bundle", "customer_name", "provider", "currency")
_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def _cells(row: dict[str, Any]) -> dict[str, Any]:
    for k in _TEXT:
        v = row.get(k)
        if isinstance(v, str) and v.startswith(_FORMULA):
            row[k] = "'" + v
    return row


def csv_bytes(invoice: Mapping[str, Any], customer_names: Mapping[str, str] | None = None,
              estimate: bool = False) -> bytes:
    """UTF-8, one row per invoice line, device-day row and customer total, then the total."""
    names = customer_names or {}
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    each = {"currency": invoice["currency"], "provider": invoice["provider"], "month": invoice["month"],
            "document": "estimate" if estimate else "invoice"}

    def row(kind: str, values: Mapping[str, Any]) -> dict[str, Any]:
        cust = values.get("customer")
        return _cells({"kind": kind, **values, **each, "customer_name": names.get(cust, "") if cust else ""})

    for line in invoice["lines"]:
        w.writerow(row("hours", line))
    for dd in invoice["device_days"]:
        w.writerow(row("device_days", dd))
    for customer, total in sorted(invoice["totals"].items()):
        w.writerow(row("customer_total", {"customer": customer, "amount": total}))
    w.writerow(row("total", {"amount": invoice["total"]}))
    return out.getvalue().encode("utf-8")


# A Unicode TrueType font for names in any script the font covers (Latin, Greek, Cyrillic,
# typographic quotes and dashes): DejaVu Sans, which the packages depend on (Debian
# fonts-dejavu-core, RPM dejavu-sans-fonts), or the TTF files TR7_PDF_FONT / TR7_PDF_FONT_BOLD
# name (e.g. a Noto CJK font). Characters the font has no glyph for print as '?'.
_FONTS = {
    "": ("TR7_PDF_FONT", "DejaVuSans.ttf"),
    "B": ("TR7_PDF_FONT_BOLD", "DejaVuSans-Bold.ttf"),
}
_FONT_DIRS = (
    "/usr/share/fonts/truetype/dejavu",  # Debian, Ubuntu
    "/usr/share/fonts/dejavu-sans-fonts",  # Fedora, RHEL 9
    "/usr/share/fonts/dejavu",  # RHEL 8
)


def _font_file(style: str) -> str | None:
    env, name = _FONTS[style]
    given = os.environ.get(env)
    if given:
        if Path(given).is_file():
            return given
        log.warning("event=pdf_font_missing %s=%s: the default font is used", env, given)
    for d in _FONT_DIRS:
        if (Path(d) / name).is_file():
            return str(Path(d) / name)
    return None


class _Text:
    """Text as the PDF's font can show it: the TTF's glyphs, or Latin-1 with the core font."""

    def __init__(self, pdf: Any) -> None:
        regular = _font_file("")
        if regular is None:
            log.warning("event=pdf_font_missing: no DejaVuSans.ttf (install fonts-dejavu-core or set "
                        "TR7_PDF_FONT); characters outside Latin-1 print as '?'")
            self.family, self._cmap = "Helvetica", None
            return
        try:
            pdf.add_font("body", "", regular)
            pdf.add_font("body", "B", _font_file("B") or regular)
        except Exception as exc:  # fontTools' TTLibError, fpdf's ValueError: a file that is no TTF
            log.warning("event=pdf_font_unusable file=%s reason=%r: the core font is used; characters "
                        "outside Latin-1 print as '?'", regular, str(exc))
            self.family, self._cmap = "Helvetica", None
            return
        self.family, self._cmap = "body", set(pdf.fonts["body"].cmap)

    def __call__(self, text: Any) -> str:
        s = str("" if text is None else text)
        if self._cmap is None:
            return s.encode("latin-1", "replace").decode("latin-1")
        return "".join(c if ord(c) in self._cmap else "?" for c in s)


CELL_SIZE, MIN_SIZE = 9.0, 6.0  # points


def _fit(pdf: Any, family: str, width: float, value: str, size: float = CELL_SIZE, height: float = 6,
         border: int = 1) -> None:
    """A cell whose text never runs into the next one: a smaller font down to MIN_SIZE, then cut
    with an ellipsis (a long id printed over the hour count, a long customer name over its total)."""
    room = width - 2 * pdf.c_margin
    start = size
    pdf.set_font(family, "", size)
    while pdf.get_string_width(value) > room and size > MIN_SIZE:
        size -= 0.5
        pdf.set_font(family, "", size)
    if pdf.get_string_width(value) > room:
        while value and pdf.get_string_width(value + "...") > room:
            value = value[:-1]
        value += "..."
    pdf.cell(width, height, value, border=border)
    pdf.set_font(family, "", start)


def _new_pdf() -> Any:
    """A landscape A4 whose every page ends on a numbered foot, and whose pages after a customer's
    first repeat who it is for and the table's headings (a 17-page customer read as bare rows)."""
    from fpdf import FPDF

    class InvoicePdf(FPDF):
        text_family = "Helvetica"
        foot = ""  # the document, the period: on every page
        running = ""  # the head of a page that continues a customer (or the summary)
        columns: tuple[tuple[float, str], ...] = ()  # the headings, while a table runs on

        def header(self) -> None:
            if self.running:
                self.set_font(self.text_family, "B", 10)
                self.cell(0, 7, self.running, new_x="LMARGIN", new_y="NEXT")
            if self.columns:
                self.column_heads()

        def column_heads(self) -> None:
            self.set_font(self.text_family, "B", 9)
            for w, h in self.columns:
                self.cell(w, 7, h, border=1)
            self.ln()

        def footer(self) -> None:
            self.set_y(-12)
            self.set_font(self.text_family, "", 8)
            self.cell(0, 6, f"{self.foot} - page {self.page_no()} of {{nb}}", align="R")

    pdf = InvoicePdf(orientation="L", format="A4")
    pdf.set_auto_page_break(True, margin=18)
    return pdf


def _period(month: str) -> str:
    start, end = month_bounds(month)
    return f"{format_time(start)[:10]} 00:00 to {format_time(end)[:10]} 00:00 UTC"


def pdf_bytes(
    invoice: Mapping[str, Any], customer_names: Mapping[str, str] | None = None,
    customers: Sequence[str] | None = None, estimate: bool = False, provider_name: str | None = None,
) -> bytes:
    """One page per customer of the invoice (``customers``: these, even without a line);
    ``estimate``: the month is open, and the document says so (it read as the final invoice);
    ``provider_name``: the catalog's name of the provider, shown beside its id."""
    names = customer_names or {}
    whole = customers is None  # the provider's whole invoice: it ends on a summary with its total
    pdf = _new_pdf()
    text = _Text(pdf)
    pdf.text_family = text.family
    cur = invoice["currency"]
    issuer = invoice["provider"] if not provider_name else f"{provider_name} ({invoice['provider']})"
    title = f"{'Estimate' if estimate else 'Invoice'} {invoice['month']} - {issuer}"
    pdf.foot = text(f"{title} - period {_period(invoice['month'])}")
    if customers is None:
        customers = sorted(
            set(invoice["totals"])
            | {x["customer"] for x in invoice["lines"]}
            | {x["customer"] for x in invoice["device_days"]}
        )
    if not customers:
        customers = [""]
    # 270 mm of the 277 a landscape A4 has between its margins; the capacity column is the widest
    # text ("enterprise 1000 Mbps 25 vs"), and any cell still too long shrinks to fit (_fit).
    widths = (32, 30, 56, 36, 18, 28, 30, 40)
    head = ("License", "Instance", "Capacity / pack", "Quantity", "Unit", "Price", "Amount", "Adjusts")
    for cust in customers:
        pdf.running, pdf.columns = "", ()
        pdf.add_page()
        pdf.set_font(text.family, "B", 16)
        pdf.cell(0, 10, text(title), new_x="LMARGIN", new_y="NEXT")
        pdf.set_font(text.family, "", 11)
        who = f"Customer: {names.get(cust, cust)} ({cust})" if cust else "No customer billed"
        pdf.cell(0, 7, text(who), new_x="LMARGIN", new_y="NEXT")
        pdf.cell(0, 7, text(f"Period: {_period(invoice['month'])}   Currency: {cur}"),
                 new_x="LMARGIN", new_y="NEXT")
        if estimate:
            pdf.cell(0, 7, text("Not an invoice: the month is open, and its amounts change until it is "
                                "closed."), new_x="LMARGIN", new_y="NEXT")
        pdf.ln(3)
        pdf.columns = tuple(zip(widths, head, strict=True))
        pdf.column_heads()
        pdf.running = text(f"{title} - {who} (continued)")
        pdf.set_font(text.family, "", 9)
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
                _fit(pdf, text.family, w, text(v))
            pdf.ln()
        for r in (x for x in invoice["device_days"] if x["customer"] == cust):
            row = (
                "",
                "",
                r["pack"],
                # an adjustment row holds differences: "5 d = 0" read as wrong arithmetic (a review)
                f"{r['device_days']:+d} d, {r['months']:+d}" if r.get("adjusts") else
                f"{r['device_days']} d = {r['months']}",
                "months",
                r["price"],
                r["amount"],
                r.get("adjusts") or "",
            )
            for w, v in zip(widths, row, strict=True):
                _fit(pdf, text.family, w, text(v))
            pdf.ln()
        pdf.columns = ()
        pdf.ln(3)
        pdf.set_font(text.family, "B", 11)
        total = f"{names.get(cust, cust)} ({cust})" if cust else ""
        pdf.cell(0, 8, text(f"Total {total}: {invoice['totals'].get(cust, '0.00')} {cur}"),
                 new_x="LMARGIN", new_y="NEXT")
    if whole:
        _summary(pdf, text, invoice, names, title)
    return bytes(pdf.output())


def _summary(pdf: Any, text: Any, invoice: Mapping[str, Any], names: Mapping[str, str], title: str) -> None:
    """The last page of a provider's whole invoice: each customer's total, and the invoice's."""
    cur = invoice["currency"]
    pdf.running, pdf.columns = "", ()
    pdf.add_page()
    pdf.set_font(text.family, "B", 16)
    pdf.cell(0, 10, text(f"{title}: summary"), new_x="LMARGIN", new_y="NEXT")
    pdf.running = text(f"{title}: summary (continued)")
    pdf.set_font(text.family, "", 11)
    for cust, amount in sorted(invoice["totals"].items()):
        _fit(pdf, text.family, 150, text(f"{names.get(cust, cust)} ({cust})"), size=11, height=7, border=0)
        pdf.cell(50, 7, text(f"{amount} {cur}"), align="R", new_x="LMARGIN", new_y="NEXT")
    pdf.ln(3)
    pdf.set_font(text.family, "B", 12)
    pdf.cell(0, 8, text(f"Total: {invoice['total']} {cur}"), new_x="LMARGIN", new_y="NEXT")
