"""The log's stored 256-leaf subtree hashes ("tiles"): roots and proofs without reading every leaf.

Tile i is MTH(D[256 i : 256 i + 256]), the root of a perfect subtree, written by the ingest
transaction that completes it; the log's row keeps the peaks of its partial tile, so that
ingest never reads leaves back. RFC 9162's tree splits a range at the largest power of two below
its size, so a range of whole, aligned tiles hashes exactly as the tree over those tile hashes:
a checkpoint at size n reads n / 256 tile hashes plus the leaf hashes of the last partial tile,
and a proof also the leaves of the tile holding its index or its old size, instead of all n.
"""

from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from collector import schema as s
from protocol.merkle import EMPTY_ROOT, HASH_SIZE, MerkleAccumulator, MerkleError, node_hash, root_hash

TILE = 256
_L, _T = s.leaves.c, s.tiles.c


def leaf_hashes(conn: Connection, provider: str, month: str, lo: int, hi: int) -> list[bytes]:
    """Leaf hashes of indexes lo..hi-1 (fewer if the log is shorter), in index order."""
    q = sa.select(_L.leaf_hash).where(
        _L.provider == provider, _L.month == month, _L.idx >= lo, _L.idx < hi
    ).order_by(_L.idx)
    return [bytes(h) for h in conn.execute(q).scalars()]


def write_tiles(
    conn: Connection, provider: str, month: str, size: int, new: list[bytes], state: bytes | None
) -> bytes:
    """Store the tiles that leaves size.. (hashes ``new``, just appended) complete; return the
    state of the partial tile after them: the log size it is for, then its accumulator's peaks.

    ``state`` is read with the log's row; when it is for another size (NULL before revision
    0007, or a process of an older version appended meanwhile) the partial tile's leaves are
    read back. A tile that such a process completed is missing and computed when read."""
    part = size % TILE
    peaks = state[8:] if state and len(state) >= 8 and int.from_bytes(state[:8], "big") == size else None
    if peaks is not None and len(peaks) == HASH_SIZE * part.bit_count():
        acc = MerkleAccumulator(part, [peaks[i : i + HASH_SIZE] for i in range(0, len(peaks), HASH_SIZE)])
    else:
        acc = MerkleAccumulator.from_hashes(leaf_hashes(conn, provider, month, size - part, size))
    done, acc = fold(acc, size // TILE, new)
    if done:
        conn.execute(
            s.tiles.insert(), [{"provider": provider, "month": month, "idx": t, "hash": h} for t, h in done]
        )
    return tile_state(size + len(new), acc)


def fold(
    acc: MerkleAccumulator, tile: int, hashes: Iterable[bytes]
) -> tuple[list[tuple[int, bytes]], MerkleAccumulator]:
    """Append leaf hashes to tile ``tile``'s accumulator: the (index, hash) of every tile they
    complete, and the accumulator of the partial tile after them."""
    done = []
    for h in hashes:
        acc.append(h)
        if acc.size == TILE:
            done.append((tile, acc.root()))
            tile += 1
            acc = MerkleAccumulator()
    return done, acc


def tile_state(size: int, acc: MerkleAccumulator) -> bytes:
    """`logs.tile_peaks`: the log size (8 bytes, big-endian), then the partial tile's peaks."""
    return size.to_bytes(8, "big") + b"".join(acc.peaks)


class StoredTree:
    """The first ``size`` leaves of one log as protocol.merkle's RangeRoots: tiles where whole,
    leaf hashes (read once per tile) where not."""

    def __init__(self, conn: Connection, provider: str, month: str, size: int) -> None:
        self._conn, self._provider, self._month, self._size = conn, provider, month, size
        whole = size // TILE
        rows = conn.execute(
            sa.select(_T.idx, _T.hash).where(_T.provider == provider, _T.month == month, _T.idx < whole)
        )
        stored = {int(i): bytes(h) for i, h in rows}
        self._blocks: dict[int, list[bytes]] = {}
        # A tile not stored (leaves written without one, e.g. directly by a test) is computed.
        self._tiles = [stored[t] if t in stored else root_hash(self._block(t)) for t in range(whole)]

    def __len__(self) -> int:
        return self._size

    def _block(self, t: int) -> list[bytes]:
        if t not in self._blocks:
            hi = min((t + 1) * TILE, self._size)
            got = leaf_hashes(self._conn, self._provider, self._month, t * TILE, hi)
            if len(got) != hi - t * TILE:
                raise MerkleError(f"the log holds fewer than {hi} leaves")
            self._blocks[t] = got
        return self._blocks[t]

    def range_root(self, lo: int, hi: int) -> bytes:
        """MTH(D[lo:hi]) for the ranges RFC 9162's recursion visits (lo a multiple of every
        perfect subtree size inside the range)."""
        if lo % TILE == 0 and hi % TILE == 0:
            return root_hash(self._tiles[lo // TILE : hi // TILE])
        t = lo // TILE
        if hi <= (t + 1) * TILE:
            return root_hash(self._block(t)[lo - t * TILE : hi - t * TILE])
        k = 1 << ((hi - lo - 1).bit_length() - 1)
        return node_hash(self.range_root(lo, lo + k), self.range_root(lo + k, hi))

    def root(self) -> bytes:
        return EMPTY_ROOT if self._size == 0 else self.range_root(0, self._size)
