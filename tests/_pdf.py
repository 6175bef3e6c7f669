"""The text of a PDF as a reader would copy it (pypdf, through the fonts' ToUnicode maps)."""

import io

from pypdf import PdfReader


def pdf_text(data: bytes) -> str:
    return "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(data)).pages)


def pdf_text_pages(data: bytes) -> list[str]:
    """Each page's text apart."""
    return [page.extract_text() for page in PdfReader(io.BytesIO(data)).pages]
