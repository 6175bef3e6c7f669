"""RFC 9162 §2.1 Merkle tree math (SHA-256): roots, inclusion and consistency proofs, an accumulator."""

import hashlib
from collections.abc import Iterable, Sequence
from typing import Protocol

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()


class MerkleError(ValueError):
    """A proof that does not verify, or arguments that describe no valid proof."""


LEAF_PREFIX = b"\x00"  # RFC 9162 §2.1.1: a leaf's hash is SHA-256(0x00 || its bytes)


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(LEAF_PREFIX + data).digest()


def leaf_hasher() -> "hashlib._Hash":
    """A leaf's hash fed in pieces (update, then digest): a line too long to hold whole."""
    return hashlib.sha256(LEAF_PREFIX)


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split_point(n: int) -> int:
    """The largest power of two strictly smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def _check_hash(h: bytes, what: str) -> None:
    if not isinstance(h, bytes | bytearray) or len(h) != HASH_SIZE:
        raise MerkleError(f"{what} must be a {HASH_SIZE}-byte hash")


def root_hash(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH(D[n]) over already-hashed leaves; the empty tree's root is SHA-256 of nothing.

    Computed bottom-up level by level, carrying an odd last node up unchanged: this builds
    exactly RFC 9162's tree (left subtrees perfect, split at the largest power of two < n)
    without recursion or slicing copies per level beyond one list.
    """
    n = len(leaf_hashes)
    if n == 0:
        return EMPTY_ROOT
    level = list(leaf_hashes)
    while len(level) > 1:
        nxt = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


class RangeRoots(Protocol):
    """A tree of ``len()`` leaves that computes MTH(D[lo:hi]) itself, e.g. from stored subtree
    hashes (collector/tiles.py): proofs then need not read every leaf hash."""

    def __len__(self) -> int: ...

    def range_root(self, lo: int, hi: int) -> bytes: ...


Leaves = Sequence[bytes] | RangeRoots


def _range_root(leaf_hashes: Leaves, lo: int, hi: int) -> bytes:
    if isinstance(leaf_hashes, Sequence):
        return root_hash(leaf_hashes[lo:hi])
    return leaf_hashes.range_root(lo, hi)


def _check_size(leaf_hashes: Leaves, size: int | None) -> int:
    n = len(leaf_hashes) if size is None else size
    if not 0 <= n <= len(leaf_hashes):
        raise MerkleError(f"tree size {n} outside 0..{len(leaf_hashes)}")
    return n


def inclusion_proof(leaf_hashes: Leaves, index: int, size: int | None = None) -> list[bytes]:
    """PATH(index, D[size]) of RFC 9162 §2.1.3.1, leaf-side first.

    Each sibling subtree is hashed once, so one proof costs O(size) hashes in total.
    """
    n = _check_size(leaf_hashes, size)
    if not 0 <= index < n:
        raise MerkleError(f"leaf index {index} outside a tree of size {n}")
    proof: list[bytes] = []
    lo, hi = 0, n
    while hi - lo > 1:
        k = _split_point(hi - lo)
        if index < lo + k:
            proof.append(_range_root(leaf_hashes, lo + k, hi))
            hi = lo + k
        else:
            proof.append(_range_root(leaf_hashes, lo, lo + k))
            lo += k
    proof.reverse()  # collected root-side first; the wire order is leaf-side first
    return proof


def consistency_proof(
    leaf_hashes: Leaves, old_size: int, new_size: int | None = None
) -> list[bytes]:
    """PROOF(old_size, D[new_size]) of RFC 9162 §2.1.4.1; empty when old_size is 0 or equal."""
    n = _check_size(leaf_hashes, new_size)
    if not 0 <= old_size <= n:
        raise MerkleError(f"old size {old_size} outside 0..{n}")
    if old_size in (0, n):
        return []
    proof: list[bytes] = []
    m, lo, hi, whole = old_size, 0, n, True
    # SUBPROOF(m, D[lo:hi], whole) unrolled: the recursive call is always the last step.
    while m != hi - lo:
        k = _split_point(hi - lo)
        if m <= k:
            proof.append(_range_root(leaf_hashes, lo + k, hi))
            hi = lo + k
        else:
            proof.append(_range_root(leaf_hashes, lo, lo + k))
            m -= k
            lo += k
            whole = False
    if not whole:
        proof.append(_range_root(leaf_hashes, lo, hi))
    proof.reverse()
    return proof


def verify_inclusion(leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> None:
    """RFC 9162 §2.1.3.2; raise MerkleError unless ``proof`` proves leaf ``index`` under ``root``."""
    _check_hash(leaf_hash, "leaf hash")
    _check_hash(root, "root")
    if not 0 <= index < size:
        raise MerkleError(f"leaf index {index} outside a tree of size {size}")
    fn, sn, r = index, size - 1, leaf_hash
    for p in proof:
        _check_hash(p, "proof element")
        if sn == 0:
            raise MerkleError("inclusion proof is too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise MerkleError("inclusion proof is too short")
    if r != root:
        raise MerkleError("inclusion proof does not lead to the root")


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """RFC 9162 §2.1.4.2; raise MerkleError unless the tree of ``old_root`` is a prefix of ``new_root``'s."""
    _check_hash(old_root, "old root")
    _check_hash(new_root, "new root")
    if not 0 <= old_size <= new_size:
        raise MerkleError(f"sizes {old_size} -> {new_size}: a log never shrinks")
    if old_size == 0 or old_size == new_size:
        # Trivial cases outside the RFC algorithm: nothing to prove, so the proof must be empty,
        # and the roots must be the ones those sizes imply.
        if proof:
            raise MerkleError("consistency proof must be empty for these sizes")
        if old_size == 0 and old_root != EMPTY_ROOT:
            raise MerkleError("the root of the empty tree is SHA-256 of nothing")
        if old_size == new_size and old_root != new_root:
            raise MerkleError("same size, different roots")
        return
    if not proof:
        raise MerkleError("consistency proof is empty")
    for p in proof:
        _check_hash(p, "proof element")
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise MerkleError("consistency proof is too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise MerkleError("consistency proof is too short")
    if fr != old_root:
        raise MerkleError("consistency proof does not lead to the old root")
    if sr != new_root:
        raise MerkleError("consistency proof does not lead to the new root")


class MerkleAccumulator:
    """The root of an append-only log in O(log n) state: the compact range [0, size).

    ``peaks`` are the roots of the perfect subtrees that make up the tree, largest (leftmost)
    first, one per set bit of ``size``; a collector can persist (size, peaks) and resume.
    """

    def __init__(self, size: int = 0, peaks: Iterable[bytes] = ()) -> None:
        self._peaks = list(peaks)
        if size < 0 or len(self._peaks) != size.bit_count():
            raise MerkleError(f"a tree of size {size} has {size.bit_count() if size >= 0 else 0} peaks")
        for p in self._peaks:
            _check_hash(p, "peak")
        self._size = size

    @classmethod
    def from_hashes(cls, leaf_hashes: Iterable[bytes]) -> "MerkleAccumulator":
        acc = cls()
        for h in leaf_hashes:
            acc.append(h)
        return acc

    @property
    def size(self) -> int:
        return self._size

    @property
    def peaks(self) -> list[bytes]:
        return list(self._peaks)

    def append(self, leaf_hash: bytes) -> None:
        _check_hash(leaf_hash, "leaf hash")
        h = leaf_hash
        # Each trailing 1 bit of the old size is a peak of the same height as the carry: merge.
        s = self._size
        while s & 1:
            h = node_hash(self._peaks.pop(), h)
            s >>= 1
        self._peaks.append(h)
        self._size += 1

    def root(self) -> bytes:
        if not self._peaks:
            return EMPTY_ROOT
        r = self._peaks[-1]
        for p in reversed(self._peaks[:-1]):
            r = node_hash(p, r)
        return r
