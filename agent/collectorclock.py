"""The collector's clock, from the Date headers of its answers: our clock ahead is caught before it signs."""

import email.utils
import threading
import time

# heartbeat-v1.md §4: the collector rejects a heartbeat more than 300 s ahead of its clock
# (time.future). No margin: a Date header is whole seconds rounded down and was sent before it is
# read, so the collector's time is never over-estimated, nor is ours ahead under-estimated. With
# 5 s of margin, a slot signed 301-305 s ahead was rejected and left a gap in the chain.
AHEAD_LIMIT = 300


class CollectorClock:
    """Whether our clock is ahead of the collector's. A heartbeat signed with a time the collector
    rejects as time.future also moves the chain's head into the future: every later slot until
    then was skipped as "clock backwards", days of metering after one boot before NTP had synced."""

    def __init__(self) -> None:
        self._seen: tuple[float, float] | None = None  # (the collector's time, our monotonic then)
        self._lock = threading.Lock()

    def saw(self, date: str | None) -> None:
        """Note an answer's Date header (RFC 9110 §6.6.1); one that does not parse is ignored."""
        if not date:
            return
        try:
            when = email.utils.parsedate_to_datetime(date).timestamp()
        except (TypeError, ValueError, IndexError):
            return
        with self._lock:
            self._seen = (when, time.monotonic())

    def ahead(self) -> float | None:
        """Seconds our wall clock is ahead of the collector's now (negative: behind), from the last
        answer carried forward on the monotonic clock, so that a fix of our clock (NTP stepping it
        back) counts at once, with no new answer. None before any answer."""
        with self._lock:
            seen = self._seen
        if seen is None:
            return None
        theirs = seen[0] + (time.monotonic() - seen[1])
        return time.time() - theirs
