"""capacities: a row per (provider, day, instance, capacity, hour) instead of per day.

Why (also in docs/performance.md, "Fifth pass"): each ingest appends its offsets to the
capacity rows it touches. With a row per day, an instance polled every minute holds 1,440 offsets
(~8.6 kB) by midnight, and each heartbeat of its agent rewrote the whole row of every one of its
instances: the work per heartbeat grew through the day. An hour's row holds at most one hour's
offsets. Readers are unchanged: they add each row's offsets to its day.

The rows are aggregates of the evidence; `leaves` is not touched. Old rows are split by the hour
of each offset, which is where ingest now puts them; downgrade merges them back. Measured on the
2-core test machine: 20,000 full day rows (480,000 hour rows) in ~10 s on SQLite, ~14 s on
PostgreSQL, with progress in the log every 5,000 rows written.
"""

import logging
from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0006_capacities_hourly"
down_revision = "0005_catalogs_retroactive"
branch_labels = None
depends_on = None

log = logging.getLogger("alembic.runtime.migration")
KEY = ("provider", "day", "instance", "cap")
BATCH = 5000


def _table(name: str, hourly: bool) -> sa.Table:
    cols: list[sa.Column[Any]] = [
        sa.Column("provider", sa.String, primary_key=True),
        sa.Column("day", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("instance", sa.String, primary_key=True),
        sa.Column("cap", sa.String, primary_key=True),
    ]
    if hourly:
        cols.append(sa.Column("hour", sa.SmallInteger, primary_key=True, autoincrement=False))
    return sa.Table(name, sa.MetaData(), *cols, sa.Column("offsets", sa.Text, nullable=False))


def _text(offsets: set[int]) -> str:
    return ",".join(map(str, sorted(offsets)))


def split_by_hour(rows: Iterator[sa.Row[Any]]) -> Iterator[dict[str, Any]]:
    """Daily rows -> hourly rows (offsets distinct and ascending, as ingest writes them)."""
    for r in rows:
        key = {k: getattr(r, k) for k in KEY}
        texts = r.offsets.split(",")
        offs = list(map(int, texts))
        ordered = sorted(set(offs))
        if ordered != offs:  # rare: appended out of order or twice; ingest writes them ascending
            offs, texts = ordered, list(map(str, ordered))
        i = 0
        while i < len(offs):  # slices of the text as it was: no number written again
            h = offs[i] // 3600
            j = bisect_left(offs, (h + 1) * 3600, i)
            yield {**key, "hour": h, "offsets": ",".join(texts[i:j])}
            i = j


def merge_hours(rows: Iterator[sa.Row[Any]]) -> Iterator[dict[str, Any]]:
    """Hourly rows in key order -> one daily row per key."""
    key: tuple[Any, ...] | None = None
    offs: set[int] = set()
    for r in rows:
        k = tuple(getattr(r, c) for c in KEY)
        if k != key and key is not None:
            yield {**dict(zip(KEY, key, strict=True)), "offsets": _text(offs)}
            offs = set()
        key = k
        offs.update(int(x) for x in r.offsets.split(","))
    if key is not None:
        yield {**dict(zip(KEY, key, strict=True)), "offsets": _text(offs)}


def _rebuild(hourly: bool, convert: Callable[[Iterator[sa.Row[Any]]], Iterator[dict[str, Any]]]) -> None:
    bind = op.get_bind()
    if ("hour" in {c["name"] for c in sa.inspect(bind).get_columns("capacities")}) == hourly:
        return  # a new database: revision 0001 created the schema module as it is now
    old, new = _table("capacities", not hourly), _table("capacities_next", hourly)
    new.drop(bind, checkfirst=True)  # left by an attempt stopped midway where DDL is not transactional
    new.create(bind)
    total = bind.execute(sa.select(sa.func.count()).select_from(old)).scalar_one()
    log.info("capacities: rewriting %d rows as a row per %s", total, "hour" if hourly else "day")
    # Ordered by key: merge_hours relies on it, and both databases read it from the primary key.
    # (the option on the statement: on the connection it would stay for the inserts too)
    src = bind.execute(sa.select(old).order_by(*old.primary_key).execution_options(yield_per=BATCH))
    batch: list[dict[str, Any]] = []
    read = 0

    def rows() -> Iterator[sa.Row[Any]]:
        nonlocal read
        for r in src:
            read += 1
            yield r

    for out in convert(rows()):
        batch.append(out)
        if len(batch) >= BATCH:
            bind.execute(new.insert(), batch)
            batch = []
            log.info("capacities: %d of %d rows read", read, total)
    if batch:
        bind.execute(new.insert(), batch)
    op.drop_table("capacities")
    op.rename_table("capacities_next", "capacities")
    if bind.dialect.name == "postgresql":  # the name a new database gives it
        op.execute("ALTER TABLE capacities RENAME CONSTRAINT capacities_next_pkey TO capacities_pkey")


def upgrade() -> None:
    _rebuild(True, split_by_hour)


def downgrade() -> None:
    _rebuild(False, merge_hours)
