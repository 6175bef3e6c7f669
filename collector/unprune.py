"""`tr7-collector unprune`: a pruned month's JWS put back from its archived bundle, and the seal lifted.

Why: `prune` is deliberate, but an operator may have pruned too early (late heartbeats still
expected, an auditor asking for the month again in another form). The archived bundle holds every
line; each is checked against the leaf hash the database kept for its index (the log's own
commitment, RFC 9162 §2.1) before it is written, so only the month's own lines go back, in their
places, whatever else the directory holds. Idempotent: cut short, run it again.
"""

from collections.abc import Iterator
from pathlib import Path
from typing import IO

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from audit.archive import READ_ERRORS, ArchiveError, is_archive, member
from audit.bundle import HEARTBEATS
from collector import db, tlog
from collector import schema as s
from collector.prune import CHUNK, Progress, PruneRefused
from protocol.merkle import leaf_hash

L = s.leaves.c


def unprune(engine: Engine, provider: str, month: str, bundle: Path, progress: Progress | None = None) -> int:
    """Put the JWS back and lift the seal; returns how many leaves got their JWS back."""
    with db.read_conn(engine) as conn:
        row = tlog.pruned(conn, provider, month)
    if row is None:
        raise PruneRefused(f"{provider} {month} is not pruned: nothing to put back")
    size = int(row.size)
    packed = is_archive(bundle)  # `prune --compress`'s OUT.tar.gz, read as it is
    path = f"{bundle}:{HEARTBEATS}" if packed else str(bundle / HEARTBEATS)
    if not packed and not (bundle / HEARTBEATS).is_file():
        raise PruneRefused(f"{path}: no such file; the month's bundle was archived to {row.archive}")
    if engine.dialect.name == "postgresql":
        # Fresh statistics first: after a `VACUUM FULL` (docs/collector.md, after a prune) and
        # before autovacuum analyses again, PostgreSQL estimated one row for the month and looked
        # each leaf up through ix_leaves_pm_time, reading the whole month per line: 43,200 lines
        # took 64 s instead of 3 s (bench/bench_prune.py). ANALYZE blocks neither reads nor writes.
        with engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE leaves")
    # Each chunk's lines are checked against their leaf hashes in the transaction that writes
    # them: a line of another file never goes in. A wrong file stops at its first such chunk; the
    # lines put back before it are the month's own, and the month stays sealed.
    restored = n = 0
    try:
        with member(bundle, HEARTBEATS) if packed else (bundle / HEARTBEATS).open("rb") as f:
            for lo, chunk in _chunks(f):
                if lo + len(chunk) > size:
                    raise PruneRefused(f"{path} holds more than the {size} lines of {provider} {month}'s log")

                # a def, not a lambda: mypy infers no type for a lambda whose defaults take the loop's values
                def put(c: Connection, lo: int = lo, ch: list[bytes] = chunk) -> int:
                    return _put(c, provider, month, lo, ch, path)

                restored += db.write_tx(engine, put)
                n = lo + len(chunk)
                if progress is not None:
                    progress("putting the heartbeats back", n, size)
    except (ArchiveError, *READ_ERRORS) as exc:
        raise PruneRefused(f"{bundle}: {exc}; after {n} lines put back, the month stays sealed") from exc
    if n != size:
        raise PruneRefused(f"{path} holds {n} lines, {provider} {month}'s log {size}: the month stays sealed")
    db.write_tx(engine, lambda c: _unseal(c, provider, month))
    return restored


def _chunks(f: IO[bytes]) -> Iterator[tuple[int, list[bytes]]]:
    """(index of the first, lines) CHUNK at a time, streamed: a big month's file is gigabytes.
    Bytes: a line is compared with its leaf hash as it is, whatever it holds."""
    lo, chunk = 0, []
    for line in f:
        chunk.append(line.rstrip(b"\n"))
        if len(chunk) == CHUNK:
            yield lo, chunk
            lo, chunk = lo + CHUNK, []
    if chunk:
        yield lo, chunk


def _put(conn: Connection, provider: str, month: str, lo: int, lines: list[bytes], path: str) -> int:
    """The JWS of the chunk's leaves that have none (a leaf kept by the prune keeps its own), once
    every line of the chunk is found to be its leaf."""
    stored = conn.execute(sa.select(L.idx, L.leaf_hash, sa.func.length(L.jws).label("n")).where(
        L.provider == provider, L.month == month, L.idx >= lo, L.idx < lo + len(lines))).all()
    by_idx = {int(r.idx): r for r in stored}
    for i, line in enumerate(lines, lo):
        r = by_idx.get(i)
        if r is None or bytes(r.leaf_hash) != leaf_hash(line):
            raise PruneRefused(f"{path} line {i + 1} is not leaf {i} of {provider} {month}'s log (its "
                               "hash differs): not its bundle, or altered; the month stays sealed")
    # A leaf's text is ASCII (the collector accepted it as a compact JWS): the hash says it is
    rows = [{"i": i, "jws": line.decode("ascii")} for i, line in enumerate(lines, lo) if by_idx[i].n == 0]
    if rows:
        q = s.leaves.update().where(L.provider == provider, L.month == month, L.idx == sa.bindparam("i"))
        conn.execute(q.values(jws=sa.bindparam("jws", type_=s.leaves.c.jws.type)), rows)
    return len(rows)


def _unseal(conn: Connection, provider: str, month: str) -> None:
    """Lift the seal, under the log's lock, once no leaf of the month lacks its JWS: a `prune`
    still dropping (it takes the same lock for each chunk) would otherwise go on dropping in a
    month that takes heartbeats again."""
    tlog.lock_log(conn, provider, month)
    missing = conn.execute(sa.select(sa.func.count()).where(
        L.provider == provider, L.month == month, sa.func.length(L.jws) == 0)).scalar_one()
    if missing:
        raise PruneRefused(f"{provider} {month}: {missing} heartbeat(s) were dropped again while their "
                           "JWS went back (a prune of the month is still running): the month stays "
                           "sealed; run unprune again once that prune has finished")
    conn.execute(s.prunes.delete().where(s.prunes.c.provider == provider, s.prunes.c.month == month))
    conn.execute(s.logs.update().where(s.logs.c.provider == provider, s.logs.c.month == month)
                 .values(pruned_at=None))
