"""The invoice PDF's table cells stay inside their columns (a long text printed over the next one)."""

from typing import Any

from fpdf import FPDF

from collector import render


def test_cells_shrink_then_cut_to_their_column() -> None:
    pdf = FPDF(orientation="L", format="A4")
    text = render._Text(pdf)
    pdf.add_page()
    drawn: list[tuple[float, str, float]] = []
    real = pdf.cell

    def spy(w: float, h: float, txt: str, **kw: Any) -> Any:
        drawn.append((w, txt, pdf.font_size_pt))
        return real(w, h, txt, **kw)

    pdf.cell = spy  # type: ignore[method-assign]
    capacity = "enterprise 1000 Mbps 25 vs"  # the demo's: it ran over the quantity column
    render._fit(pdf, text.family, 56, capacity)
    render._fit(pdf, text.family, 32, "SL-" + "x" * 80)
    assert pdf.font_size_pt == render.CELL_SIZE  # the next cell starts at the usual size
    for w, txt, size in drawn:
        pdf.set_font(text.family, "", size)
        assert pdf.get_string_width(txt) <= w - 2 * pdf.c_margin, (txt, size)
    assert drawn[0][1] == capacity and drawn[0][2] == render.CELL_SIZE  # fits as it is
    assert drawn[1][1].endswith("...") and drawn[1][2] == render.MIN_SIZE  # shrunk, then cut


def _invoice(lines: int, name_len: int = 10) -> dict[str, Any]:
    rows = [{"customer": "c1", "license": f"L{i}", "instance": f"TR7-{i:04d}", "bundle": "pro",
             "bandwidth_mbps": 500, "vservices": 10, "quantity": "744", "price": "0.0900", "amount": "66.96",
             "adjusts": None} for i in range(lines)]
    return {"provider": "acme", "month": "2026-10", "currency": "CHF", "lines": rows, "device_days": [],
            "totals": {"c1": "1.00", "c2": "33.48"}, "total": "34.48"}


def test_a_customer_over_many_pages_says_whose_each_page_is_and_numbers_them() -> None:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests._pdf import pdf_text_pages

    pages = pdf_text_pages(render.pdf_bytes(_invoice(120), {"c1": "Coastal Dental"}, ["c1"],
                                            provider_name="Acme"))
    assert len(pages) >= 3
    for n, page in enumerate(pages, 1):
        assert f"page {n} of {len(pages)}" in page  # every page numbered, the total known
        assert "2026-10-01 00:00 to 2026-11-01 00:00 UTC" in page  # the period, on every page
        assert "Coastal Dental (c1)" in page  # whose page it is, on every page
        assert "Quantity" in page  # and the table's headings again
    assert "(continued)" in pages[1] and "(continued)" not in pages[0]
    assert "Total Coastal Dental (c1): 1.00 CHF" in pages[-1]


def test_a_long_customer_name_on_the_summary_stays_clear_of_its_amount(monkeypatch: Any) -> None:
    # a 75-character name was drawn 166 mm wide in a 120 mm cell, over the amount
    drawn: list[tuple[float, float, str, float]] = []  # x, width, text, font size of each cell
    make = render._new_pdf

    def spied() -> Any:
        pdf = make()
        real = pdf.cell

        def cell(w: float, h: float = 0, text: str = "", **kw: Any) -> Any:
            drawn.append((pdf.get_x(), w, text, pdf.font_size_pt))
            return real(w, h, text, **kw)

        pdf.cell = cell
        return pdf

    monkeypatch.setattr(render, "_new_pdf", spied)
    long_name = "Northwind Regional Medical Practices and Outpatient Surgery Centers and Clinics Holding AG"
    render.pdf_bytes(_invoice(1), {"c2": long_name}, provider_name="Acme")
    pdf = FPDF()
    family = render._Text(pdf).family
    at = next(i for i, d in enumerate(drawn) if d[2].startswith("Northwind"))
    x, _w, name, size = drawn[at]
    amount = drawn[at + 1]
    assert amount[2] == "33.48 CHF"
    pdf.set_font(family, "", size)
    assert x + pdf.get_string_width(name) <= amount[0]  # the name ends before the amount begins
    assert size < 11 and "(c2)" in name  # shrunk to fit, the id kept


def test_a_device_day_adjustment_row_reads_as_a_change_not_as_arithmetic() -> None:
    """An adjustment row holds differences (billing-v1.md §6): "5 d = 0 months" read as wrong
    arithmetic beside the regular rows' "5 d = 1". Found by an MSP review."""
    from tests._pdf import pdf_text

    inv = _invoice(1)
    inv["device_days"] = [
        {"customer": "c1", "pack": "pro", "device_days": 40, "months": 2, "price": "12.00",
         "amount": "24.00"},
        {"customer": "c1", "pack": "pro", "device_days": 5, "months": 0, "price": "12.00", "amount": "0.00",
         "adjusts": "2026-09"},
    ]
    text = pdf_text(render.pdf_bytes(inv, {"c1": "One"}, None, estimate=False))
    assert "40 d = 2 months" in text and "+5 d, +0 months" in text and "5 d = 0" not in text


def test_a_pdf_adds_no_info_lines_to_the_service_log(caplog: Any) -> None:
    """fontTools' subsetter logged ~37 INFO lines a PDF into the collector's journal (any viewer
    could flood it by downloading invoices, burying the event= lines). Found by an API review."""
    import logging

    assert render._font_file("") is not None  # the TTF path, the one that subsets (fonts-dejavu-core)
    with caplog.at_level(logging.INFO):
        render.pdf_bytes(_invoice(3), {"c1": "Zürich Ärzte"}, ["c1"], provider_name="Acme")
    assert [r.name for r in caplog.records if r.name.startswith("fontTools")] == []
