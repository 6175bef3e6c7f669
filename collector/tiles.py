"""The log's stored 256-leaf subtree hashes ("tiles"): roots and proofs without reading every leaf.

Tile i is MTH(D[256 i : 256 i + 256]), the root of a perfect subtree, written by the ingest
transaction that completes it. RFC 9162's tree splits a range at the largest power of two below
its size, so a range of whole, aligned tiles hashes exactly as the tree over those tile hashes:
a checkpoint at size n reads n / 256 tile hashes plus the leaf hashes of the last partial tile,
and a proof also the leaves of the tile holding its index or its old size, instead of all n.
"""

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from collector import schema as s
from protocol.merkle import MerkleError, node_hash, root_hash

TILE = 256
_L, _T = s.leaves.c, s.tiles.c


def leaf_hashes(conn: Connection, provider: str, month: str, lo: int, hi: int) -> list[bytes]:
    """Leaf hashes of indexes lo..hi-1 (fewer if the log is shorter), in index order."""
    q = sa.select(_L.leaf_hash).where(
        _L.provider == provider, _L.month == month, _L.idx >= lo, _L.idx < hi
    ).order_by(_L.idx)
    return [bytes(h) for h in conn.execute(q).scalars()]


def write_tiles(conn: Connection, provider: str, month: str, size: int, new: list[bytes]) -> None:
    """Store the tiles that leaves size.. (hashes ``new``, just appended) complete."""
    first, last = size // TILE, (size + len(new)) // TILE
    if first == last:
        return
    start = first * TILE  # a tile begun by earlier batches: its first leaves are read back
    hashes = (leaf_hashes(conn, provider, month, start, size) if start < size else []) + new
    conn.execute(
        s.tiles.insert(),
        [
            {"provider": provider, "month": month, "idx": t,
             "hash": root_hash(hashes[(t - first) * TILE : (t - first + 1) * TILE])}
            for t in range(first, last)
        ],
    )


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
        return root_hash([]) if self._size == 0 else self.range_root(0, self._size)
