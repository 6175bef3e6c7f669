"""Sign-in throttling: failed attempts per client address and per (address, user name), and a cap
on the password checks running at once.

Why: every sign-in runs scrypt (16 MiB, tens of ms) before anything is known; without a limit,
53 guesses a second went unanswered by any delay, and 64 concurrent anonymous sign-ins took the
shared thread pool (heartbeat ingest waits in it too) and 500 MiB. Counters live in each worker
process's memory (with N workers an address gets N times the allowance; a restart forgets them),
which bounds guessing without a table written at every failure.
"""

import contextlib
import threading
import time
from collections import deque
from collections.abc import Iterator

WINDOW = 15 * 60  # seconds a failure counts for
PER_ADDRESS = 30  # failed sign-ins from one address in the window
PER_NAME = 5  # failed sign-ins for one user name from one address in the window
MAX_KEYS = 50_000  # counters kept at most (the oldest are forgotten first)
CHECK_WAIT = 10.0  # seconds a sign-in waits for a free password check before a 429


class Busy(Exception):
    """Too many password checks running: the sign-in is refused, not queued."""


class SignInThrottle:
    def __init__(self, checks: int) -> None:
        self._lock = threading.Lock()
        self._fails: dict[tuple[str, str | None], deque[float]] = {}
        self._checks = threading.BoundedSemaphore(max(1, checks))

    def attempt(self, address: str, username: str, now: float | None = None) -> int:
        """Seconds before this address may try this user name again (0: now, and the attempt is
        counted as a failure until ``succeeded`` takes it back). Counted before the password is
        checked, not after: checked then counted, a burst of concurrent wrong passwords all
        passed the check (40 for one name instead of 5)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            worst = 0.0
            for key, limit in (((address, None), PER_ADDRESS), ((address, username), PER_NAME)):
                q = self._recent(key, now)
                if q is not None and len(q) >= limit:
                    worst = max(worst, q[0] + WINDOW - now)
            if worst > 0:
                return int(worst) + 1
            for key in ((address, None), (address, username)):
                q = self._fails.pop(key, None) or deque()
                q.append(now)
                self._fails[key] = q  # re-inserted: the dict's order is the least recently failed
            while len(self._fails) > MAX_KEYS:
                del self._fails[next(iter(self._fails))]
            return 0

    def succeeded(self, address: str, username: str) -> None:
        """The attempt was not a failure: the name's count is cleared, the address's loses it."""
        with self._lock:
            self._fails.pop((address, username), None)
            q = self._fails.get((address, None))
            if q:
                q.pop()

    def not_checked(self, address: str, username: str) -> None:
        """The attempt was refused before its password was checked (Busy): it is taken back from
        both counts, and the name's earlier failures stand (clearing them, as a success does,
        let a name's failures be wiped by filling the checks from other addresses)."""
        with self._lock:
            for key in ((address, username), (address, None)):
                q = self._fails.get(key)
                if q:
                    q.pop()

    @contextlib.contextmanager
    def checking(self) -> Iterator[None]:
        """One password check's slot (at most one per core run at once)."""
        if not self._checks.acquire(timeout=CHECK_WAIT):
            raise Busy
        try:
            yield
        finally:
            self._checks.release()

    def _recent(self, key: tuple[str, str | None], now: float) -> deque[float] | None:
        q = self._fails.get(key)
        if q is None:
            return None
        while q and q[0] <= now - WINDOW:
            q.popleft()
        if not q:
            del self._fails[key]
            return None
        return q
