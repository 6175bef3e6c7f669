"""UTC time on the wire: RFC 3339 `YYYY-MM-DDTHH:MM:SSZ` strings, epoch seconds, months."""

import calendar
import re
from datetime import UTC, datetime
from decimal import Decimal

from protocol.errors import ProtocolError

# ASCII digits only and \Z, not $: `$` would accept a trailing newline, `\d` non-ASCII digits.
# Hours 00-23, as RFC 3339 allows: from Python 3.14 fromisoformat reads 24:00:00 as the next
# day's midnight, and a collector there would log in the next month what a 3.11 auditor rejects.
_TIME_RE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([01][0-9]|2[0-3]):([0-5][0-9]):([0-9]{2})Z\Z")
_MONTH_RE = re.compile(r"([0-9]{4})-([0-9]{2})\Z")


def parse_time(text: str, rule: str = "time") -> int:
    """Parse the strict wire form into epoch seconds (no fraction, only `Z`)."""
    m = _TIME_RE.match(text) if isinstance(text, str) else None
    if m is None:
        raise ProtocolError(rule, f"not a UTC time of the form YYYY-MM-DDTHH:MM:SSZ: {text!r}")
    try:
        # The pattern fixed the form; the C parser judges the calendar (half the time of
        # int() x 6, datetime() and timegm). Leap seconds (:60) are refused: they have no epoch
        # second of their own.
        return int(datetime.fromisoformat(text).timestamp())
    except ValueError as exc:
        raise ProtocolError(rule, f"not a valid calendar time: {text!r}") from exc


# Any RFC 3339 date-time (§5.6): a fraction, an offset, lower-case t and z. Only for documents
# whose time format the specs leave open (heartbeat-v1.md §6 agents.json, manifest.json): the
# heartbeat's own `time` is the strict form above.
_RFC3339_RE = re.compile(
    r"([0-9]{4}-[0-9]{2}-[0-9]{2})[Tt]((?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-9]{2})(\.[0-9]+)?"
    r"([Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])\Z"
)


def parse_rfc3339(text: object, rule: str = "time", round_up: bool = False) -> int:
    """Any RFC 3339 date-time as epoch seconds, a fraction dropped (``round_up``: counted as the
    next second, for the start of a window: a heartbeat's whole second is inside it only then)."""
    epoch, frac = _rfc3339(text, rule)
    return epoch + 1 if round_up and frac else epoch


def rfc3339_instant(text: str, rule: str = "time") -> Decimal:
    """Any RFC 3339 date-time as exact epoch seconds, its fraction kept (to order two of them)."""
    epoch, frac = _rfc3339(text, rule)
    return epoch + frac


def _rfc3339(text: object, rule: str) -> tuple[int, Decimal]:
    m = _RFC3339_RE.match(text) if isinstance(text, str) else None
    if m is None:
        raise ProtocolError(rule, f"not an RFC 3339 date-time (YYYY-MM-DDTHH:MM:SS[.f]Z or +hh:mm): {text!r}")
    date, clock, frac, offset = m.groups()
    offset = "+00:00" if offset in ("Z", "z") else offset
    leap = clock.endswith(":60")  # RFC 3339 §5.7 allows a leap second, which POSIX time has no second for
    try:
        second = clock[:-2] + "59" if leap else clock
        epoch = int(datetime.fromisoformat(f"{date}T{second}{offset}").timestamp())
    except ValueError as exc:
        raise ProtocolError(rule, f"not a valid calendar time: {text!r}") from exc
    if leap:
        # §5.7: a leap second is only ever 23:59:60 UTC on a month's last day (ITU-R TF.460 puts
        # them there); any other :60 names no instant, and one read as :59 would move a window.
        # Judged on its :59 (the next second is in year 10000 after 9999-12-31, which no datetime holds).
        t = datetime.fromtimestamp(epoch, UTC)
        if (t.hour, t.minute, t.second) != (23, 59, 59) or t.day != calendar.monthrange(t.year, t.month)[1]:
            raise ProtocolError(rule, f"not a leap second (only 23:59:60 UTC ends a month): {text!r}")
        # Read as the last instant of the second before it: a window that starts then starts at the
        # next whole second (round_up), one that ends then still holds that second, not the next.
        return epoch, LEAP_FRACTION
    return epoch, Decimal(f"0{frac}") if frac else Decimal(0)


LEAP_FRACTION = Decimal("0.999999999")  # a leap second, whatever its own fraction (see _rfc3339)


def format_time(epoch: int) -> str:
    # Not strftime: glibc's %Y writes year 1 as "1", not the wire's four digits "0001".
    t = datetime.fromtimestamp(epoch, UTC)
    return f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}Z"


def parse_month(text: str) -> tuple[int, int]:
    """(year, month) of a `YYYY-MM` month from 0001-01 to 9999-11: the ones whose bounds are
    times (month_bounds of 9999-12 ends in year 10000, which no datetime holds)."""
    m = _MONTH_RE.match(text) if isinstance(text, str) else None
    if m is None or not 1 <= int(m.group(2)) <= 12:
        raise ProtocolError("month", f"not a month of the form YYYY-MM: {text!r}")
    y, mo = int(m.group(1)), int(m.group(2))
    if y == 0 or (y, mo) == (9999, 12):
        raise ProtocolError("month", f"not a month from 0001-01 to 9999-11: {text!r}")
    return y, mo


def month_bounds(month: str) -> tuple[int, int]:
    """[start, end) of a month as epoch seconds."""
    y, mo = parse_month(month)
    start = calendar.timegm((y, mo, 1, 0, 0, 0, 0, 0, 0))
    ny, nm = (y + 1, 1) if mo == 12 else (y, mo + 1)
    return start, calendar.timegm((ny, nm, 1, 0, 0, 0, 0, 0, 0))


def month_of(epoch: int) -> str:
    t = datetime.fromtimestamp(epoch, UTC)
    return f"{t.year:04d}-{t.month:02d}"  # four digits always (see format_time)


def previous_month(month: str) -> str:
    y, mo = parse_month(month)
    return f"{y - 1:04d}-12" if mo == 1 else f"{y:04d}-{mo - 1:02d}"


def next_month(month: str) -> str:
    y, mo = parse_month(month)
    return f"{y + 1:04d}-01" if mo == 12 else f"{y:04d}-{mo + 1:02d}"
