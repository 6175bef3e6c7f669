"""Money as Decimal: parsing the rate card's strings, half-up rounding to cents, JSON strings."""

import re
from decimal import ROUND_HALF_UP, Decimal

CENT = Decimal("0.01")
# Plain non-negative decimals only: no exponent, sign, NaN or Infinity can hide in a price.
MONEY_RE = re.compile(r"^[0-9]+(\.[0-9]+)?\Z")  # \Z: "$" also matches before a final newline


def round_half_up(value: Decimal) -> Decimal:
    """Round to 2 decimals, halves away from zero (billing-v1.md: round_half_up(x, 2))."""
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


def money_text(value: Decimal) -> str:
    """A cent amount as it travels in JSON: always two decimals, never an exponent."""
    return f"{round_half_up(value):f}"


def parse_money(text: str) -> Decimal:
    """Parse an amount from a document (invoices carry signed amounts in adjustment lines)."""
    return Decimal(text)
