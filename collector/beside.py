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

At most one such read is in flight per process, and none waits for it: a second bill meanwhile
reads in order. So a connection held while waiting for the pool is never waited on by another
such holder, and a busy pool cannot deadlock (the second connection comes from the same pool).
"""

import logging
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor

from sqlalchemy.engine import Connection, Engine

from collector import db, evidence, tlog
from protocol.chain import ChainAnalysis
from protocol.timefmt import previous_month

log = logging.getLogger(__name__)

_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tr7-chain-rules")
_free = threading.Semaphore(1)


def _after_fork() -> None:
    # A forked child has no copy of the pool's thread, yet the pool counts it as started: a
    # job submitted there would wait forever. Each child starts its own.
    global _pool, _free
    _pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tr7-chain-rules")
    _free = threading.Semaphore(1)


os.register_at_fork(after_in_child=_after_fork)


def _sizes(conn: Connection, provider: str, month: str) -> tuple[int, int]:
    return tlog.log_size(conn, provider, month), tlog.log_size(conn, provider, previous_month(month))


def _rules(engine: Engine, provider: str, month: str, want: tuple[int, int]) -> ChainAnalysis | None:
    """The chain rules over the first ``want[0]`` leaves, or None if the anchors' log differs."""
    try:
        with db.read_conn(engine) as conn:
            size, before = _sizes(conn, provider, month)
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

    def __init__(self, conn: Connection, provider: str, month: str) -> None:
        self.conn, self.provider, self.month = conn, provider, month
        self.job: Future[ChainAnalysis | None] | None = None
        if _shared(conn.engine) and _free.acquire(blocking=False):
            try:
                self.job = _pool.submit(_rules, conn.engine, provider, month, _sizes(conn, provider, month))
            except RuntimeError:  # the interpreter is shutting down: no new threads
                _free.release()

    def result(self) -> ChainAnalysis:
        analysis = None
        if self.job is not None:
            try:
                analysis = self.job.result()
            except Exception as exc:  # e.g. the pool's timeout: the first connection can still do it
                log.warning("event=chain_rules_beside_failed reason=%r", exc)
        if analysis is None:
            analysis = evidence.chain_analysis(self.conn, self.provider, self.month)
        return analysis
