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
