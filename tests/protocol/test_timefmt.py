"""protocol.timefmt.parse_time against the plain calendar rules, on every field's edges; months."""

import calendar
import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.errors import ProtocolError
from protocol.timefmt import (
    format_time,
    month_bounds,
    month_of,
    next_month,
    parse_month,
    parse_time,
    previous_month,
)


def reference(y: int, mo: int, d: int, h: int, mi: int, s: int) -> int | None:
    """Epoch seconds of a valid UTC calendar time (no leap second), else None."""
    try:
        dt.datetime(y, mo, d, h, mi, s)
    except ValueError:
        return None
    return calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0))


@given(st.integers(0, 9999), st.integers(0, 13), st.integers(0, 32), st.integers(0, 25),
       st.integers(0, 61), st.integers(0, 61))
def test_parse_time_is_the_calendar(y: int, mo: int, d: int, h: int, mi: int, s: int) -> None:
    text = f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}Z"
    want = reference(y, mo, d, h, mi, s)
    if want is None:
        # an hour or minute out of range breaks the form (RFC 3339), the rest the calendar
        why = "of the form" if h > 23 or mi > 59 else "not a valid calendar time"
        with pytest.raises(ProtocolError, match=why):
            parse_time(text)
    else:
        assert parse_time(text) == want
        assert format_time(want) == text
        assert month_of(want) == text[:7]


@pytest.mark.parametrize("text", [
    "2026-11-01T00:00:00+00:00", "2026-11-01T00:00:00.5Z", "2026-11-01 00:00:00Z", "2026-11-01T00:00:00z",
    "2026-11-01T00:00:00Z\n", "２026-11-01T00:00:00Z", "20261101T000000Z", "2026-11-01", "",
])
def test_other_forms_are_refused(text: str) -> None:
    with pytest.raises(ProtocolError, match="not a UTC time of the form"):
        parse_time(text)


def test_leap_second_and_edges() -> None:
    with pytest.raises(ProtocolError, match="calendar"):
        parse_time("2016-12-31T23:59:60Z")
    assert parse_time("1970-01-01T00:00:00Z") == 0
    assert parse_time("2024-02-29T23:59:59Z") == calendar.timegm((2024, 2, 29, 23, 59, 59, 0, 0, 0))
    with pytest.raises(ProtocolError, match="calendar"):
        parse_time("2100-02-29T00:00:00Z")
    # Hour 24 is refused by the form itself, not left to the calendar: from Python 3.14
    # fromisoformat reads T24:00:00 as the next day's midnight (RFC 3339 allows 00-23)
    for text in ("2026-11-30T24:00:00Z", "2026-11-30T23:60:00Z"):
        with pytest.raises(ProtocolError, match="of the form"):
            parse_time(text)


@given(st.integers(0, 9999), st.integers(1, 12))
def test_every_accepted_month_has_bounds_that_are_times(year: int, mo: int) -> None:
    text = f"{year:04d}-{mo:02d}"
    if year == 0 or (year, mo) == (9999, 12):  # its bounds are no datetime: refused, not a 500
        with pytest.raises(ProtocolError, match="0001-01 to 9999-11"):
            parse_month(text)
        return
    start, end = month_bounds(text)
    assert format_time(start) == f"{text}-01T00:00:00Z" and month_of(start) == text == month_of(end - 1)
    if (year, mo) != (1, 1):
        assert next_month(previous_month(text)) == text
    assert len(previous_month(text)) == len(next_month(text)) == 7  # four-digit years: 0999-12
