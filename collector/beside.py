"""A month's chain rules run on a second connection while the first reads its day rows.

Billing from the aggregates waits on two reads that do not depend on each other: the chain rules
(collector/chainsql.py, almost all of it inside the database, which runs it without Python's GIL)
and the day rows (almost all of it Python building 60,000 row tuples a month; the catalog is
parsed after them, while the rules may still run). Side by side on two cores, a bill of 2,000
instances took ~60 ms for both instead of ~100, and 0.10-0.12 s in all (bench/bench_bill.py).

The two reads must describe one state of the logs. Each connection reads in its own snapshot
(collector/db.read_conn), so the second one reads the two log sizes the chain rules depend on
(the month's and the month before's, which holds the anchors) and applies the rules to the first
connection's leaves only (chainsql's ``size``). If the month before's log grew in between, or
anything goes wrong beside, the rules run again on the first connection, as they always did.

At most one such read is in flight per process: a second bill meanwhile reads in order. The
second connection is not one of the engine's pool, which may be held by requests that wait for
this very bill (collector/resultcache.py): it is opened for the read and closed after it. And
the bill never waits for it: if the job has no connection yet when the day rows are read, the
first connection runs the rules and the job, once connected, returns at once.
"""

import logging
import os
import threading
import weakref
from concurrent.futures import Future, ThreadPoolExecutor

from sqlalchemy.engine import Connection, Engine

from collector import db, evidence, tlog
from protocol.chain import ChainAnalysis
from protocol.timefmt import previous_month

log = logging.getLogger(__name__)

# Below this many leaves the rules take a few ms on the first connection: a thread and a new
# connection would cost about as much (and the day rows are read before it connects).
BESIDE_FROM = 10_000

_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tr7-chain-rules")
_free = threading.Semaphore(1)


# Each engine's side engine: a connection of its own per read beside, opened and closed, never
# one of the engine's pool, which requests waiting for this very bill may hold (every one of them
# waited for the pool's 30 s timeout). A weak key: it goes with the engine.
_side: "weakref.WeakKeyDictionary[Engine, Engine]" = weakref.WeakKeyDictionary()
_side_lock = threading.Lock()


def _side_engine(engine: Engine) -> Engine:
    with _side_lock:
        side = _side.get(engine)
        if side is None:
            side = _side[engine] = db.make_engine(engine.url.render_as_string(hide_password=False),
                                                  pooled=False)
        return side


def _after_fork() -> None:
    # A forked child has no copy of the pool's thread, yet the pool counts it as started: a
    # job submitted there would wait forever. Each child starts its own.
    global _pool, _free, _side_lock
    _pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tr7-chain-rules")
    _free = threading.Semaphore(1)
    _side_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork)


def log_sizes(conn: Connection, provider: str, month: str) -> tuple[int, int]:
    """The sizes of the logs a month's chain rules read: its own and the month before's (anchors)."""
    return tlog.log_size(conn, provider, month), tlog.log_size(conn, provider, previous_month(month))


class _Claim:
    """Who reads the rules: the job beside, once it has its connection, or the first connection,
    if the job has not got one by the time the caller needs them. Decided once, under a lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = "waiting"

    def take(self, who: str) -> bool:
        with self._lock:
            if self._state == "waiting":
                self._state = who
            return self._state == who


def _rules(
    engine: Engine, provider: str, month: str, want: tuple[int, int], claim: _Claim
) -> ChainAnalysis | None:
    """The chain rules over the first ``want[0]`` leaves; None if the anchors' log differs or the
    caller has stopped waiting for a connection."""
    try:
        with db.read_conn(_side_engine(engine)) as conn:
            if not claim.take("beside"):
                return None
            size, before = log_sizes(conn, provider, month)
            if before != want[1] or size < want[0]:
                return None
            # None when the log has not grown since: the plain query, without the size filter.
            return evidence.chain_analysis(conn, provider, month, None if size == want[0] else want[0])
    finally:
        _free.release()


def _shared(engine: Engine) -> bool:
    """Whether a second connection of ``engine`` sees the same database (not SQLite's :memory:)."""
    return engine.dialect.name != "sqlite" or engine.url.database not in (None, "", ":memory:")


class ChainRules:
    """evidence.chain_analysis of the month as ``conn`` sees it: started beside on construction
    when it can be, so that the caller reads the day rows (and parses its catalog) meanwhile."""

    def __init__(
        self, conn: Connection, provider: str, month: str, sizes: tuple[int, int] | None = None
    ) -> None:
        """``sizes``: log_sizes as ``conn`` sees them, if the caller has read them already."""
        self.conn, self.provider, self.month = conn, provider, month
        self.job: Future[ChainAnalysis | None] | None = None
        self.claim = _Claim()
        if not _shared(conn.engine):
            return
        # Read before the slot is taken: a failed read keeps none
        want = log_sizes(conn, provider, month) if sizes is None else sizes
        if want[0] >= BESIDE_FROM and _free.acquire(blocking=False):
            try:
                self.job = _pool.submit(_rules, conn.engine, provider, month, want, self.claim)
            except RuntimeError:  # the interpreter is shutting down (no new threads): read in order
                _free.release()
            except BaseException:
                _free.release()
                raise

    def result(self) -> ChainAnalysis:
        analysis = None
        # A job still connecting when the caller has read its day rows is given up: a busy
        # database may be slow to give a connection, and this one can read the rules now.
        if self.job is not None and not self.claim.take("first"):
            try:
                analysis = self.job.result()
            except Exception as exc:
                log.warning("event=chain_rules_beside_failed reason=%r", exc)
        if analysis is None:
            analysis = evidence.chain_analysis(self.conn, self.provider, self.month)
        return analysis
