"""Polling several scopes of one endpoint (regions, subscriptions) so one failure hides no other."""

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TypeVar

from adapters.base import AdapterError, Observation, PollResult, UnreachableError

T = TypeVar("T")
log = logging.getLogger("tr7.adapters.fanout")

DEADLINE_SHARE = 0.9  # of an adapter's `timeout`: a poll ends with its own reason before the agent's
# Seconds before a poll's deadline that the checks inside a step run by `within` end: theirs is then
# the reason said ("N objects read", "script unfinished"), not the bare "no answer" of the step.
INNER_MARGIN = 0.25


def poll_deadline(timeout: float) -> float:
    """The time.monotonic() instant by which a poll of ``timeout`` seconds answers."""
    return time.monotonic() + timeout * DEADLINE_SHARE


class Turns:
    """The order an adapter's polls ask their scopes in: the scopes that answered go to the back,
    so those a poll did not finish (never asked before the timeout, ``workers`` at a time, or
    asked and late) come first next time. In a fixed order the same scopes were left unasked at
    every poll: 24 of 40 subscriptions never metered, each blamed on ARM."""

    def __init__(self) -> None:
        self.queue: list[str] = []
        self.unasked: list[str] = []  # of the last poll
        # Calls of earlier polls given up on and still running, by scope: a scope is not asked again
        # beside its own (a region dripping its answer forever added a thread at every poll).
        self.waiting: dict[str, Future[list[Observation]]] = {}

    def still_waiting(self, scopes: Sequence[str]) -> set[str]:
        """The scopes whose call of an earlier poll has not ended yet (the others are forgotten)."""
        self.waiting = {s: f for s, f in self.waiting.items() if not f.done()}
        return set(scopes) & set(self.waiting)

    def order(self, scopes: Sequence[str]) -> list[str]:
        wanted = set(scopes)  # sets built once: Proxmox passes every VM (20,000 took ~25 s)
        known = [s for s in self.queue if s in wanted]
        seen = set(known)
        return known + [s for s in scopes if s not in seen]

    def finished(self, order: Sequence[str], answered: set[str], unasked: list[str]) -> None:
        self.queue = [s for s in order if s not in answered] + [s for s in order if s in answered]
        self.unasked = unasked


def poll_scopes(
    scopes: Sequence[str],
    poll_one: Callable[[str], list[Observation]],
    *,
    label: str,
    deadline: float,
    workers: int,
    thread_name: str,
    convert: Callable[[Exception], AdapterError],
    late: Callable[[str], AdapterError],
    turns: Turns | None = None,
) -> PollResult:
    """Poll every scope concurrently until ``deadline`` (a time.monotonic() instant).

    Observations of the scopes that answered are kept; the others are named in
    ``PollResult.error`` as "<label> <scope>: <reason>" (a scope never asked says so: ``late``
    is for those asked). Only when every scope failed does the poll raise: the common error type
    (or AdapterError when they differ). ``turns``: the adapter's, so every scope gets its turn, and
    a scope whose call of an earlier poll is still running is not asked again beside it (one thread
    a scope, not one more a poll, against an endpoint that never finishes its answer).
    """
    failures: dict[str, AdapterError] = {}
    observations: list[Observation] = []
    scopes = turns.order(scopes) if turns is not None else list(scopes)
    held = turns.still_waiting(scopes) if turns is not None else set()
    for scope in held:
        earlier = late(scope)
        failures[scope] = type(earlier)(f"{earlier.reason} (the previous poll's request is still waiting: "
                                        "not asked again)", earlier.diagnostic)
    size = max(1, min(len(scopes) - len(held), workers))
    pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix=thread_name)
    try:
        futures = {pool.submit(poll_one, s): s for s in scopes if s not in held}
        done, pending = wait(futures, timeout=max(0.0, deadline - time.monotonic()))
        unasked = [futures[f] for f in futures if f in pending and f.cancel()]  # never started
        for fut in pending:
            scope = futures[fut]
            failures[scope] = UnreachableError(
                f"not asked: the poll timeout came before its turn ({size} {label}s at a time); it is "
                "asked first at the next poll") if scope in unasked else late(scope)
        if turns is not None:
            turns.finished(scopes, {futures[f] for f in done}, unasked)
            turns.waiting.update((futures[f], f) for f in pending if futures[f] not in unasked)
        for fut in done:
            try:
                observations.extend(fut.result())
            except Exception as exc:  # converted at the boundary, per scope
                failures[futures[fut]] = convert(exc)
    finally:
        # a late scope keeps its thread until the SDK's own timeouts end it; never block on it
        pool.shutdown(wait=False, cancel_futures=True)
    observations.sort(key=lambda o: (o.instance, o.vm))
    if not failures:
        return PollResult(observations=observations)
    per_scope = "; ".join(f"{label} {s}: {failures[s].reason}" for s in sorted(failures))
    if len(failures) < len(scopes):
        # the count first: a heartbeat's error is cut short (agent/poller.py), and it named only
        # the first of 35 regions an organisation's policy denied
        many = f"{len(failures)} of {len(scopes)} {label}s failed: " if len(failures) > 1 else ""
        return PollResult(observations=observations, error=many + per_scope)
    kinds = {type(f) for f in failures.values()}
    reasons = {f.reason for f in failures.values()}
    kind = kinds.pop() if len(kinds) == 1 else AdapterError
    raise kind(reasons.pop() if len(reasons) == 1 else per_scope, per_scope)


class StillWaiting(UnreachableError):
    """A step ``within`` did not start: the previous poll's step still waits for its answer. Nothing
    was sent, so nothing of this poll's (a session, a connection) is left mid-answer."""


class SetupLock:
    """An adapter's set-up lock (one login or list at a time, see within), with the step that took
    it last: the one a later poll names when it finds the lock still held."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.step = ""

    def locked(self) -> bool:
        return self._lock.locked()

    def __enter__(self) -> "SetupLock":
        self._lock.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


def within(deadline: float, step: Callable[[], T], *, what: str, lock: SetupLock,
           thread_name: str, abandoned: Callable[[T], None] | None = None) -> T:
    """Run a poll's set-up step (signing in, assuming a role, listing regions) by ``deadline``.

    Those calls came before the scopes' deadline and retried on their own: against a frozen
    endpoint a poll ran ~5x its timeout and the agent only said "previous poll still running".
    A step that is late raises UnreachableError; its thread ends by the SDK's own timeouts, and
    ``lock`` keeps the next poll's set-up from running beside it (an SDK session is not
    thread-safe). ``abandoned`` is given, in that thread once ``lock`` is free, what a step
    returned after its poll gave up on it: a server-side session nobody will use, to end."""
    if lock.locked():
        # The previous poll's step still has no answer (a frozen endpoint): one thread waits on it,
        # not one more per poll (a thread a poll piled up on the lock, 288 a day at 300 s). Named
        # by the step that waits: a hung list read as "login" with a token that logs in nowhere.
        waiting = lock.step or what
        raise StillWaiting(f"{waiting}: no answer within the poll timeout (the previous poll's "
                           "attempt is still waiting)")
    answer: Future[T] = Future()
    handover = threading.Lock()  # the result goes to the waiting poll or to ``abandoned``, never both
    gave_up = claimed = False

    def locked() -> None:
        nonlocal claimed
        with lock:
            lock.step = what
            try:
                result = step()
            except BaseException as exc:  # raised in the poll's thread
                failed: BaseException | None = exc
            else:
                failed = None
                with handover:
                    claimed = not gave_up
        if failed is None and not claimed and abandoned is not None:
            # after the lock is free: ending a session nobody uses may be as slow as opening it was,
            # and the next poll's sign-in must not wait on it (the late session is no one else's)
            with contextlib.suppress(Exception):  # best effort: the server ends it later anyway
                abandoned(result)
        # after the lock is free: the next step of the same poll may take it at once
        if failed is None:
            answer.set_result(result)
        else:
            answer.set_exception(failed)

    # A daemon thread, not an executor's: those are joined when the interpreter exits, and one
    # stuck in a vendor SDK kept a stopped agent alive until systemd killed it.
    threading.Thread(target=locked, name=thread_name, daemon=True).start()
    try:
        return answer.result(timeout=max(0.0, deadline - time.monotonic()))
    except FutureTimeout:
        with handover:
            gave_up = not claimed
        if not gave_up:  # it answered as the clock ran out, and is ours: delivered in a moment
            return answer.result()
        raise UnreachableError(f"{what}: no answer within the poll timeout") from None


class Behind:
    """An adapter's best-effort calls (logging out, deleting a shell, closing a connection): each runs
    in a daemon thread and may outlive its poll. At most ``limit`` threads at a time; a call made
    while they are all busy waits its turn and runs in the first one that frees. Against a server
    dripping its answers such calls ran a thread each, one more at every poll, in four hand-written
    copies; skipped instead, a WinRM shell of every poll stayed on the host until its idle timeout
    (and the shell quota, 30 by default, was reached in half an hour), a closed libvirt connection
    for the process's life (a review). Beyond ``queue`` waiting calls, the oldest is dropped with a
    warning: what it would end, the server ends later by its own timeout, if it has one."""

    def __init__(self, name: str, limit: int = 2, queue: int = 64) -> None:
        self.name = name
        self.limit = limit
        self.queue = queue
        self._lock = threading.Lock()
        self._running = 0
        self._waiting: deque[tuple[Callable[[], object], str, threading.Event]] = deque()

    @property
    def running(self) -> int:
        """Calls running or waiting their turn."""
        with self._lock:
            return self._running + len(self._waiting)

    def start(self, call: Callable[[], object], *, what: str, thread_name: str) -> threading.Event:
        """Run ``call`` in a thread of its own, or after the calls before it; the Event is set once it
        ended, however (or was dropped)."""
        return self._submit(call, what, thread_name)[0]

    def _submit(self, call: Callable[[], object], what: str,
                thread_name: str) -> tuple[threading.Event, bool]:
        """``start``; and whether it started now (False: it waits its turn)."""
        ended = threading.Event()
        with self._lock:
            if self._running >= self.limit:
                if len(self._waiting) >= self.queue:
                    _, dropped, gone = self._waiting.popleft()
                    gone.set()
                    log.warning("adapter %s: %s dropped: %d calls wait for the server already", self.name,
                                dropped, len(self._waiting) + 1)
                self._waiting.append((call, what, ended))
                log.warning("adapter %s: %s waits its turn: %d earlier ones are still waiting for the "
                            "server", self.name, what, self._running)
                return ended, False
            self._running += 1
        threading.Thread(target=self._work, args=(call, what, ended), name=thread_name, daemon=True).start()
        return ended, True

    def _work(self, call: Callable[[], object], what: str, ended: threading.Event) -> None:
        while True:
            try:
                call()
            except Exception as exc:  # best effort: the server ends it later anyway
                log.debug("adapter %s: %s failed: %s", self.name, what, exc)
            finally:
                ended.set()
            with self._lock:
                if not self._waiting:
                    self._running -= 1
                    return
                call, what, ended = self._waiting.popleft()

    def run(self, deadline: float, call: Callable[[], object], *, what: str, thread_name: str,
            wait_turn: bool = False) -> bool:
        """``start`` it and wait for it until ``deadline`` (a time.monotonic() instant): True if it
        ended by then; late, it ends in its thread. A call that waits its turn is waited for only with
        ``wait_turn`` (an adapter's close: a stop's budget is there to log out; a poll that had its
        answer waited out its deadline behind two stuck deletions, a review)."""
        ended, started = self._submit(call, what, thread_name)
        return (started or wait_turn) and ended.wait(max(0.0, deadline - time.monotonic()))


def forgetting(poll: Callable[[], PollResult], forget: Callable[[], None]) -> PollResult:
    """Run ``poll``; after one that failed as a whole call ``forget``, so that the next poll builds
    its session again and reads its credentials again. Kept for an adapter's life, they outlived
    a routine rotation (a new key or secret in its file, the old one deleted): every poll failed
    until a reload, while `tr7-agent check` (a fresh adapter) said all was well.

    A partial poll keeps them: some scope took them, so they work. Forgotten after a partial one
    too, a region never enabled or a subscription that refuses the principal for good made every
    poll sign in (or assume its role) again."""
    try:
        return poll()
    except AdapterError:
        forget()
        raise
