"""RFC 9162 Merkle math against the RFC 6962 reference vectors, corrupted proofs, and properties.

Vectors: the 8 leaves, roots, inclusion and consistency proofs used by the RFC 6962 reference
tests (transparency-dev/merkle testonly/constants.go and proof/verify_test.go).
"""

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.merkle import (
    EMPTY_ROOT,
    MerkleAccumulator,
    MerkleError,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root_hash,
    verify_consistency,
    verify_inclusion,
)

LEAVES = [bytes.fromhex(h) for h in (
    "", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f",
)]
ROOTS = [bytes.fromhex(h) for h in (  # ROOTS[n] is the root of the first n leaves
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
)]
HASHES = [leaf_hash(d) for d in LEAVES]


def _h(*hexes: str) -> list[bytes]:
    return [bytes.fromhex(x) for x in hexes]


# (0-based leaf index, tree size, proof)
INCLUSION = [
    (0, 1, []),
    (0, 8, _h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
              "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
              "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4")),
    (5, 8, _h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
              "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
              "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7")),
    (2, 3, _h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125")),
    (1, 5, _h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
              "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
              "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b")),
]
# (old size, new size, proof)
CONSISTENCY = [
    (1, 1, []),
    (1, 8, _h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
              "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
              "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4")),
    (6, 8, _h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
              "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
              "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7")),
    (2, 5, _h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
              "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b")),
    (6, 7, _h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
              "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
              "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7")),
]


def test_hash_prefixes_are_rfc9162():
    assert leaf_hash(b"x") == hashlib.sha256(b"\x00x").digest()
    assert node_hash(b"a" * 32, b"b" * 32) == hashlib.sha256(b"\x01" + b"a" * 32 + b"b" * 32).digest()
    assert hashlib.sha256(b"").digest() == EMPTY_ROOT


@pytest.mark.parametrize("size", range(9))
def test_roots_of_the_reference_tree(size):
    assert root_hash(HASHES[:size]) == ROOTS[size]
    assert MerkleAccumulator.from_hashes(HASHES[:size]).root() == ROOTS[size]


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION)
def test_reference_inclusion_proofs(index, size, proof):
    assert inclusion_proof(HASHES, index, size) == proof
    verify_inclusion(HASHES[index], index, size, proof, ROOTS[size])


@pytest.mark.parametrize(("old", "new", "proof"), CONSISTENCY)
def test_reference_consistency_proofs(old, new, proof):
    assert consistency_proof(HASHES, old, new) == proof
    verify_consistency(old, new, ROOTS[old], ROOTS[new], proof)


Corruption = tuple[str, int, int, list[bytes]]


def _inclusion_corruptions(index: int, size: int, proof: list[bytes]) -> list[Corruption]:
    # Wrong sizes change the tree's height; a size off by one can give a tree of the same shape
    # along the path (e.g. leaf 1 in 5 or 6 leaves), which RFC 9162 cannot tell apart: the signed
    # checkpoint is what binds a size to its root.
    out = [
        ("index - 1", index - 1, size, proof),
        ("index + 1", index + 1, size, proof),
        ("index ^ 2", index ^ 2, size, proof),
        ("size * 2", index, size * 2, proof),
        ("size / 2", index, size // 2, proof),
        ("extra hash at end", index, size, [*proof, ROOTS[8]]),
        ("extra hash at front", index, size, [ROOTS[8], *proof]),
        ("short garbage at end", index, size, [*proof, b""]),
    ]
    for i in range(len(proof)):
        flipped = list(proof)
        flipped[i] = bytes([proof[i][0] ^ 8]) + proof[i][1:]
        out.append((f"bit flipped in proof[{i}]", index, size, flipped))
    if proof:
        out.append(("missing last hash", index, size, proof[:-1]))
        out.append(("missing first hash", index, size, proof[1:]))
    if len(proof) > 1:
        out.append(("swapped order", index, size, [proof[1], proof[0], *proof[2:]]))
        out.append(("reversed", index, size, proof[::-1]))
    return out


@pytest.mark.parametrize(("index", "size", "proof"), [c for c in INCLUSION if c[2]])
def test_corrupted_inclusion_proofs_are_rejected(index, size, proof):
    for desc, i, n, p in _inclusion_corruptions(index, size, proof):
        with pytest.raises(MerkleError):
            verify_inclusion(HASHES[index], i, n, p, ROOTS[size])
            pytest.fail(f"accepted: {desc}")
    with pytest.raises(MerkleError):
        verify_inclusion(HASHES[(index + 1) % 8], index, size, proof, ROOTS[size])  # wrong leaf
    with pytest.raises(MerkleError):
        verify_inclusion(HASHES[index], index, size, proof, ROOTS[size - 1])  # wrong root


@pytest.mark.parametrize(("old", "new", "proof"), [c for c in CONSISTENCY if c[2]])
def test_corrupted_consistency_proofs_are_rejected(old, new, proof):
    r1, r2 = ROOTS[old], ROOTS[new]
    cases = [
        ("old - 1", old - 1, new, r1, r2, proof),
        ("old + 1", old + 1, new, r1, r2, proof),
        ("old ^ 2", old ^ 2, new, r1, r2, proof),
        ("new * 2", old, new * 2, r1, r2, proof),
        ("new / 2", old, new // 2, r1, r2, proof),
        ("swapped roots", old, new, r2, r1, proof),
        ("wrong old root", old, new, ROOTS[old + 1], r2, proof),
        ("empty proof", old, new, r1, r2, []),
        ("extra hash at end", old, new, r1, r2, [*proof, r1]),
        ("extra hash at front", old, new, r1, r2, [r2, *proof]),
        ("missing last hash", old, new, r1, r2, proof[:-1]),
        ("missing first hash", old, new, r1, r2, proof[1:]),
        ("swapped order", old, new, r1, r2, [proof[1], proof[0], *proof[2:]]),
    ]
    for i in range(len(proof)):
        flipped = list(proof)
        flipped[i] = bytes([proof[i][0] ^ 16]) + proof[i][1:]
        cases.append((f"bit flipped in proof[{i}]", old, new, r1, r2, flipped))
    for desc, m, n, a, b, p in cases:
        with pytest.raises(MerkleError):
            verify_consistency(m, n, a, b, p)
            pytest.fail(f"accepted: {desc}")


def test_trivial_consistency_cases():
    verify_consistency(0, 5, EMPTY_ROOT, ROOTS[5], [])
    verify_consistency(5, 5, ROOTS[5], ROOTS[5], [])
    for args in [
        (5, 5, ROOTS[5], ROOTS[4], []),  # same size, different roots
        (5, 5, ROOTS[5], ROOTS[5], [ROOTS[1]]),  # nothing to prove, yet a proof
        (0, 5, ROOTS[1], ROOTS[5], []),  # the empty tree has one root
        (6, 5, ROOTS[6], ROOTS[5], []),  # a log never shrinks
    ]:
        with pytest.raises(MerkleError):
            verify_consistency(*args)


def test_generation_refuses_impossible_arguments():
    with pytest.raises(MerkleError):
        inclusion_proof(HASHES, 8)
    with pytest.raises(MerkleError):
        inclusion_proof(HASHES, 0, 9)
    with pytest.raises(MerkleError):
        consistency_proof(HASHES, 5, 4)
    with pytest.raises(MerkleError):
        verify_inclusion(HASHES[0], 0, 0, [], EMPTY_ROOT)


def test_accumulator_state_can_be_persisted_and_resumed():
    acc = MerkleAccumulator.from_hashes(HASHES[:5])
    assert acc.size == 5 and len(acc.peaks) == 2
    resumed = MerkleAccumulator(acc.size, acc.peaks)
    for h in HASHES[5:]:
        resumed.append(h)
    assert resumed.root() == ROOTS[8] and resumed.peaks == [ROOTS[8]]
    with pytest.raises(MerkleError):
        MerkleAccumulator(5, acc.peaks[:1])  # 5 = 0b101 needs two peaks


@settings(max_examples=60, deadline=None)
@given(size=st.integers(min_value=1, max_value=300), data=st.data())
def test_generated_proofs_verify_for_random_sizes(size, data):
    hashes = [leaf_hash(i.to_bytes(4, "big")) for i in range(size)]
    root = root_hash(hashes)
    index = data.draw(st.integers(min_value=0, max_value=size - 1), label="index")
    verify_inclusion(hashes[index], index, size, inclusion_proof(hashes, index), root)
    old = data.draw(st.integers(min_value=0, max_value=size), label="old")
    verify_consistency(old, size, root_hash(hashes[:old]), root, consistency_proof(hashes, old))
    # A proof for one leaf never proves another.
    if size > 1:
        with pytest.raises(MerkleError):
            other = (index + 1) % size
            verify_inclusion(hashes[other], index, size, inclusion_proof(hashes, index), root)


@settings(max_examples=30, deadline=None)
@given(leaves=st.lists(st.binary(max_size=8), max_size=70))
def test_accumulator_root_equals_root_hash_at_every_size(leaves):
    hashes = [leaf_hash(d) for d in leaves]
    acc = MerkleAccumulator()
    assert acc.root() == root_hash([])
    for n, h in enumerate(hashes, start=1):
        acc.append(h)
        assert acc.size == n
        assert acc.root() == root_hash(hashes[:n])
        assert len(acc.peaks) == bin(n).count("1")
