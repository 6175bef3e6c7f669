"""Callers asking for the same result at once: the first computes it, the others wait for that one."""

import threading
from collections.abc import Callable, Hashable
from typing import Any

MISSING: Any = object()  # what ``done`` answers while nothing is stored
WAIT = 300.0  # seconds a caller waits for another's computation before making its own


class Flights:
    """A month's bill takes seconds of a core at 2,000 instances, and the start-up warm-up, a page
    and an API request may all ask for it in the same second: one computes, the others wait."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._busy: dict[Hashable, threading.Event] = {}

    def once(self, key: Hashable, done: Callable[[], Any], compute: Callable[[], Any]) -> Any:
        """``compute()`` (which stores its answer) unless another caller is computing ``key``: then
        wait for it and answer ``done()``, what it stored. A caller whose wait finds nothing (the
        other failed: a pricing error, say) computes itself, and so sees why."""
        with self._lock:
            busy = self._busy.get(key)
            if busy is None:
                mine = self._busy[key] = threading.Event()
        if busy is not None:
            busy.wait(WAIT)
            got = done()
            return compute() if got is MISSING else got
        try:
            return compute()
        finally:
            with self._lock:
                self._busy.pop(key, None)
            mine.set()
