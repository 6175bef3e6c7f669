"""The chain rules (protocol/chain.py) run by the database: only each key's exceptional leaves come back.

Per key, only the leaves that are not plainly linked to a present predecessor come back: the
first, the key's number of leaves and highest seq (on the first leaf from SQLite, on the last
from PostgreSQL), the first after a gap (with the seq and
time of the predecessor that is present), a break (prev is not the digest of seq - 1), time
going back. From those the one-pass rules of `_linear_key` are reproduced exactly. A key with a repeated seq
(a fork), an anchor at or above its first seq, or anything the rows do not plainly describe is
read whole and goes through `protocol.chain.analyze_links`, which stays the reference. SQLite
finds each leaf's predecessor by a join, PostgreSQL by a window function (`_window_query`).
"""

from collections import defaultdict
from collections.abc import Mapping
from typing import Any, TypedDict, cast

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from collector import schema as s
from protocol.chain import Anchor, ChainAnalysis, ChainReport, ForkedAnchor, analyze_links

_LV = s.leaves


def _tuples(conn: Connection, q: sa.Select[Any]) -> list[tuple[Any, ...]]:
    # The driver's tuples: building SQLAlchemy Rows would cost more than the query itself here.
    result = conn.execute(q)
    try:
        return cast(list[tuple[Any, ...]], result.cursor.fetchall())
    finally:
        result.close()


def _scope(t: sa.FromClause, provider: str, month: str, size: int | None) -> list[Any]:
    out = [t.c.provider == provider, t.c.month == month]
    if size is not None:
        out.append(_below(t, size))
    return out


def _below(t: sa.FromClause, size: int) -> Any:
    # idx + 0: a filter on the covering index's entries, never a range of the primary key (SQLite
    # would take it for a log's first `size` leaves, and read every row for its chain columns).
    return t.c.idx + 0 < size


def _exceptions_query(provider: str, month: str, size: int | None) -> sa.Select[Any]:
    """Leaves whose seq - 1 is absent, whose prev is not its digest, or whose time is before its time."""
    a, b, c = _LV.alias("a"), _LV.alias("b"), _LV.alias("c")
    key = [c.c.provider == a.c.provider, c.c.month == a.c.month, c.c.kid == a.c.kid]
    if size is not None:
        key.append(_below(c, size))
    before = [*key, c.c.seq < a.c.seq]
    # The present predecessor of a leaf after a gap (none for the first): only looked up for those.
    gap_seq = sa.select(sa.func.max(c.c.seq)).where(*before).scalar_subquery()
    gap_time = sa.select(c.c.time).where(*before).order_by(c.c.seq.desc()).limit(1).scalar_subquery()
    # The key's number of leaves and highest seq, only on its first leaf: one range of the index.
    low = sa.select(sa.func.min(c.c.seq)).where(*key).scalar_subquery()
    first = sa.and_(b.c.seq.is_(None), a.c.seq == low)
    count = sa.select(sa.func.count()).where(*key).scalar_subquery()
    high = sa.select(sa.func.max(c.c.seq)).where(*key).scalar_subquery()
    missing = b.c.seq.is_(None)
    join_on = sa.and_(
        b.c.provider == a.c.provider, b.c.month == a.c.month, b.c.kid == a.c.kid, b.c.seq == a.c.seq - 1,
        *([_below(b, size)] if size is not None else []),
    )
    return (
        sa.select(
            a.c.kid, a.c.seq, a.c.prev, a.c.time, a.c.digest, b.c.digest, b.c.time,
            sa.case((missing, gap_seq), else_=None), sa.case((missing, gap_time), else_=None),
            sa.case((first, count), else_=None), sa.case((first, high), else_=None),
        )
        .select_from(a.outerjoin(b, join_on))
        .where(*_scope(a, provider, month, size))
        .where(sa.or_(missing, a.c.prev != b.c.digest, a.c.time < b.c.time))
    )


class _Window(TypedDict):
    partition_by: sa.Column[Any]
    order_by: sa.Column[Any]


def _window_query(provider: str, month: str, size: int | None) -> sa.Select[Any]:
    """The same rows as `_exceptions_query`, by one ordered pass per key (PostgreSQL's form).

    PostgreSQL plans the self-join by its statistics: right after a bulk ingest (before autovacuum
    has analysed the table) it estimated 5 rows and merge-joined each key's leaves with each
    other, 83 million rows and 14 s for 57,600 leaves; analysed, a nested loop took 0.66 s. LAG over
    the covering index's (kid, seq) order is one pass whatever the statistics say (~45 ms). SQLite
    keeps the join, which is 2-4x faster there than its window functions.
    """
    L = _LV.c
    w: _Window = {"partition_by": L.kid, "order_by": L.seq}
    t = (
        sa.select(
            L.kid, L.seq, L.prev, L.time, L.digest,
            sa.func.lag(L.seq).over(**w).label("lseq"),
            sa.func.lag(L.digest).over(**w).label("ldigest"),
            sa.func.lag(L.time).over(**w).label("ltime"),
            # The key's number of leaves and highest seq, read on its last leaf in the same window:
            # count and max over the bare partition were a second pass (67 -> 47 ms a month).
            sa.func.row_number().over(**w).label("n"),
            sa.func.lead(L.seq).over(**w).label("nseq"),
        )
        .where(*_scope(_LV, provider, month, size))
        .subquery("t")
    ).c
    # seq - 1 present; the present predecessor after a gap; the key's first and last leaves (a
    # repeated seq comes back with none of the first three, so _key_report sends its key to the
    # general rules). The last comes back even when plainly linked: it carries the count.
    pred, gap, first, last = t.lseq == t.seq - 1, t.lseq < t.seq - 1, t.lseq.is_(None), t.nseq.is_(None)
    return sa.select(
        t.kid, t.seq, t.prev, t.time, t.digest,
        sa.case((pred, t.ldigest), else_=None), sa.case((pred, t.ltime), else_=None),
        sa.case((gap, t.lseq), else_=None), sa.case((gap, t.ltime), else_=None),
        sa.case((last, t.n), else_=None), sa.case((last, t.seq), else_=None),
    ).where(sa.or_(first, last, t.lseq != t.seq - 1, t.prev != t.ldigest, t.time < t.ltime))


def _key_report(
    kid: str, rows: list[tuple[Any, ...]], anchor: Anchor | None
) -> tuple[ChainReport, set[str]] | None:
    """`_linear_key`'s result from the key's exceptional rows, or None when they do not plainly suffice."""
    rows.sort(key=lambda r: r[1])
    lo = rows[0][1]
    sized = [r for r in rows if r[9] is not None]  # SQLite's first leaf, PostgreSQL's last
    if len(sized) != 1 or sized[0][10] is None or rows[0][5] is not None or rows[0][7] is not None:
        return None  # the first leaf must come back, alone without any predecessor
    count, hi = sized[0][9], sized[0][10]
    if isinstance(anchor, ForkedAnchor):
        return None  # the month before's last seq forked: the general rules decide (rare)
    if anchor is not None and anchor.seq >= lo:
        return None  # the anchor's seq reused or inside the month: the general rules decide
    report = ChainReport(kid, lo, hi)
    quarantined: set[str] = set()
    missing = 0
    last_seq = None
    for _k, seq, prev, t, digest, p_digest, p_time, gap_seq, gap_time, _n, _hi in rows:
        if seq == last_seq:
            return None  # a repeated seq
        last_seq = seq
        if p_digest is not None:  # seq - 1 is present: a break or the clock going back
            if prev != p_digest:
                report.breaks.append(seq)
                quarantined.add(digest)
            if t < p_time:
                report.clock_back.append(seq)
        elif gap_seq is not None:  # after a gap: never a break, the clock checked against gap_seq
            if gap_seq >= seq - 1:
                return None
            report.gaps.append([gap_seq + 1, seq - 1])
            missing += seq - 1 - gap_seq
            if t < gap_time:
                report.clock_back.append(seq)
        elif seq != lo:
            return None
        elif anchor is not None:  # the first leaf, after last month's final heartbeat
            if anchor.seq < seq - 1:
                report.gaps.append([anchor.seq + 1, seq - 1])
            elif prev != anchor.digest:
                report.breaks.append(seq)
                quarantined.add(digest)
            if t < anchor.time:
                report.clock_back.append(seq)
    if count != hi - lo + 1 - missing:
        return None  # some seq is there more than once (a fork): read the key whole
    report.gaps.sort()
    return report, quarantined


def chain_analysis(
    conn: Connection, provider: str, month: str, anchors: Mapping[str, Anchor], size: int | None = None
) -> ChainAnalysis:
    """protocol.chain.analyze_links over the month's (first ``size``) leaves, run mostly by the database."""
    rows_of: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    query = _window_query if conn.dialect.name == "postgresql" else _exceptions_query
    for row in _tuples(conn, query(provider, month, size)):
        rows_of[row[0]].append(row)
    reports: dict[str, ChainReport] = {}
    quarantined: set[str] = set()
    general: list[str] = []
    for kid, rows in rows_of.items():
        done = _key_report(kid, rows, anchors.get(kid))
        if done is None:
            general.append(kid)
            continue
        reports[kid], q = done
        quarantined |= q
    if general:
        L = _LV.c
        whole = sa.select(L.kid, L.seq, L.prev, L.time, L.digest).where(
            *_scope(_LV, provider, month, size), L.kid.in_(general)
        )
        rest = analyze_links(_tuples(conn, whole.order_by(L.idx)), anchors)
        reports.update(rest.reports)
        quarantined |= rest.quarantined
    return ChainAnalysis(reports, quarantined)
