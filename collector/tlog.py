"""The per (provider, month) Merkle log: leaf hashes from the store, signed checkpoints, proofs."""

import base64
import time
from collections.abc import Iterable, Iterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from collector import highwater
from collector import schema as s
from collector.keyrotation import current_signer
from collector.settings import Settings
from collector.tiles import StoredTree
from protocol.merkle import MerkleError, consistency_proof, inclusion_proof
from protocol.note import Checkpoint, NoteSigner, sign_checkpoint
from protocol.timefmt import format_time


def signer(settings: Settings) -> NoteSigner:
    return NoteSigner(settings.origin, settings.key.private)


def log_origin(settings: Settings, provider: str, month: str) -> str:
    return f"{settings.origin}/{provider}/{month}"


def log_size(conn: Connection, provider: str, month: str) -> int:
    size = conn.execute(
        sa.select(s.logs.c.size).where(s.logs.c.provider == provider, s.logs.c.month == month)
    ).scalar()
    return int(size or 0)


def lock_log(conn: Connection, provider: str, month: str) -> int:
    """Create the log's counter row if needed and lock it for this transaction; return its size."""
    return lock_log_state(conn, provider, month)[0]


# lock_log_state's statements, built once (each ingest runs them; see collector/ingest.py _AGENTS).
_NEW_LOG = {
    name: insert(s.logs)
    .on_conflict_do_nothing(index_elements=["provider", "month"])
    .values(provider=sa.bindparam("p"), month=sa.bindparam("m"), size=0, tile_peaks=bytes(8))
    for name, insert in (("sqlite", sqlite.insert), ("postgresql", postgresql.insert))
}
_LOG_STATE = sa.select(s.logs.c.size, s.logs.c.tile_peaks, s.logs.c.pruned_at).where(
    s.logs.c.provider == sa.bindparam("p"), s.logs.c.month == sa.bindparam("m")
)
# SQLite: BEGIN IMMEDIATE already holds the database write lock
_LOCKED_STATE = {"sqlite": _LOG_STATE, "postgresql": _LOG_STATE.with_for_update()}


def lock_existing_logs(conn: Connection, provider: str, months: list[str]) -> None:
    """Lock the counter rows these months' logs have, in month order (ingest's lock order), for
    this transaction; a month with no log yet has nothing to lock. SQLite: BEGIN IMMEDIATE has."""
    if months and conn.dialect.name == "postgresql":
        L = s.logs.c
        conn.execute(sa.select(L.month).where(L.provider == provider, L.month.in_(months))
                     .order_by(L.month).with_for_update()).all()


def lock_log_state(conn: Connection, provider: str, month: str) -> tuple[int, bytes | None, int | None]:
    """lock_log, the state of the log's partial tile (collector/tiles.py write_tiles), and when
    `prune` dropped the month's evidence (None: it has not)."""
    key = {"p": provider, "m": month}
    conn.execute(_NEW_LOG[conn.dialect.name], key)
    size, partial, pruned = conn.execute(_LOCKED_STATE[conn.dialect.name], key).one()
    return int(size), None if partial is None else bytes(partial), pruned


class EvidencePruned(ValueError):
    """The month's JWS were dropped by `tr7-collector prune`: what needs them names the archive."""


def pruned(conn: Connection, provider: str, month: str) -> sa.Row[Any] | None:
    """The month's `prunes` row (collector/prune.py), if `tr7-collector prune` sealed it."""
    P = s.prunes.c
    return conn.execute(sa.select(s.prunes).where(P.provider == provider, P.month == month)).first()


def require_evidence(conn: Connection, provider: str, month: str) -> None:
    """Raise EvidencePruned when the month's JWS are no longer in the database."""
    row = pruned(conn, provider, month)
    if row is not None:
        raise EvidencePruned(
            f"{provider} {month}: its heartbeats were pruned from the database at "
            f"{format_time(int(row.pruned_at))}; its audit bundle was archived to {row.archive} "
            f"(manifest.json SHA-256 {row.manifest_sha256})")


def tree(conn: Connection, provider: str, month: str, size: int) -> StoredTree:
    """The log's first ``size`` leaves as a Merkle tree; a size past the log's is refused."""
    have = log_size(conn, provider, month)
    if not 0 <= size <= have:
        raise MerkleError(f"tree size {size} outside 0..{have}")
    return StoredTree(conn, provider, month, size)


def leaf_tokens(conn: Connection, provider: str, month: str, size: int | None = None) -> list[str]:
    """Every leaf's JWS in a list: for small logs (tests, the simulated months); export and the
    reference bill read them as a stream (iter_leaf_tokens)."""
    return list(iter_leaf_tokens(conn, provider, month, size))


LEAF_CHUNK = 2000  # leaves read at a time: about 20 MB of JWS text


def iter_leaf_tokens(conn: Connection, provider: str, month: str, size: int | None = None) -> Iterator[str]:
    """The first ``size`` leaves' JWS in index order, LEAF_CHUNK at a time by the primary key: a
    month of 1.7 million heartbeats is 16 GB of JWS, which read whole took the export's memory."""
    end = log_size(conn, provider, month) if size is None else size
    L = s.leaves.c
    for lo in range(0, end, LEAF_CHUNK):
        q = sa.select(L.jws).where(L.provider == provider, L.month == month, L.idx >= lo,
                                   L.idx < min(end, lo + LEAF_CHUNK))
        yield from conn.execute(q.order_by(L.idx)).scalars().all()


def leaf_tokens_at(conn: Connection, provider: str, month: str, indexes: Iterable[int]) -> dict[int, str]:
    """The JWS of the leaves at these indexes."""
    L = s.leaves.c
    wanted = sorted(set(indexes))
    out: dict[int, str] = {}
    for lo in range(0, len(wanted), LEAF_CHUNK):
        q = sa.select(L.idx, L.jws).where(L.provider == provider, L.month == month,
                                          L.idx.in_(wanted[lo:lo + LEAF_CHUNK]))
        out.update({int(r.idx): r.jws for r in conn.execute(q)})
    return out


def checkpoint(
    conn: Connection, settings: Settings, provider: str, month: str, size: int | None = None
) -> str:
    """The signed checkpoint at ``size`` (default: the current size), stored once per size.

    Ed25519 signatures are deterministic, so re-signing the same text gives the same note; the
    row only saves recomputing the root.
    """
    if size is None:
        size = log_size(conn, provider, month)
    note = conn.execute(
        sa.select(s.checkpoints.c.note).where(
            s.checkpoints.c.provider == provider, s.checkpoints.c.month == month, s.checkpoints.c.size == size
        )
    ).scalar()
    if note is not None:
        return str(note)
    key = current_signer(conn, settings)  # a key retired by `key rotate` signs nothing
    root = tree(conn, provider, month, size).root()
    note = sign_checkpoint(Checkpoint(log_origin(settings, provider, month), size, root), key)
    highwater.note(conn.engine, {f"{provider}/{month}": size})  # signed: never to be rewound
    # An empty log's note is signed on every request but not kept: a GET of any month of a provider
    # must not add rows (the empty root is the same constant, signing it costs ~50 us).
    if size and not conn.get_execution_options().get("readonly"):
        conn.execute(
            s.checkpoints.insert().values(
                provider=provider, month=month, size=size, root=root, note=note, created_at=int(time.time())
            )
        )
    return note


def b64(h: bytes) -> str:
    return base64.b64encode(h).decode("ascii")


def inclusion(conn: Connection, provider: str, month: str, index: int, size: int) -> list[str]:
    return [b64(h) for h in inclusion_proof(tree(conn, provider, month, size), index, size)]


def consistency(conn: Connection, provider: str, month: str, old: int, new: int) -> list[str]:
    return [b64(h) for h in consistency_proof(tree(conn, provider, month, new), old, new)]
