"""Roots and proofs from stored tiles (collector/tiles.py) are those of the plain list of leaf
hashes (protocol.merkle) at sizes around tile boundaries: with tiles written by batches that
split tiles (from the partial tile's stored state, or from its leaves when the state is missing
or for another size), by ingest itself, by migration 0007's backfill, and with tiles missing."""

import hashlib
import random

import pytest
import sqlalchemy as sa

from collector import db, tlog
from collector import schema as s
from collector.ingest import ingest_lines
from collector.tiles import TILE, StoredTree, tile_state, write_tiles
from protocol.merkle import MerkleAccumulator, MerkleError, consistency_proof, inclusion_proof, root_hash

MONTH = "2026-11"
N = 5 * TILE + 20
SIZES = [0, 1, 2, 255, 256, 257, 511, 512, 513, 768, 1024, 1025, 1280, N - 1, N]


def _leaf(i: int, h: bytes) -> dict:
    return {"provider": "acme", "month": MONTH, "idx": i, "digest": f"{i:064x}", "leaf_hash": h,
            "kid": "k", "seq": i + 1, "prev": "p", "time": 0, "interval": 60, "received_at": 0, "jws": "x"}


def _log(settings, n: int = N, seed: int = 0) -> list[bytes]:
    """n synthetic leaves appended in batches of random sizes, each writing its tiles as ingest does:
    with the partial tile's state of the batch before, or without (its leaves read back)."""
    rnd = random.Random(seed)
    hashes = [hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(n)]

    def tx(c: sa.Connection) -> None:
        size, state = 0, None
        while size < n:
            k = min(n - size, rnd.choice([1, 7, 100, 255, 256, 300, 600]))
            c.execute(s.leaves.insert(), [_leaf(i, hashes[i]) for i in range(size, size + k)])
            # A state for another size (an older collector appended meanwhile) with as many peaks
            # as this size's partial tile has: it must not be trusted.
            stale = (size + 1).to_bytes(8, "big") + b"\x07" * 32 * (size % TILE).bit_count()
            given = rnd.choice([state, state, None, stale])
            state = write_tiles(c, "acme", MONTH, size, hashes[size : size + k], given)
            size += k
        c.execute(s.logs.insert().values(provider="acme", month=MONTH, size=n, tile_peaks=state))

    db.write_tx(settings.engine, tx)
    return hashes


def _check_all(settings, hashes: list[bytes]) -> None:
    with db.read_conn(settings.engine) as c:
        for size in SIZES:
            tree = tlog.tree(c, "acme", MONTH, size)
            assert tree.root() == root_hash(hashes[:size]), size
            for index in {0, size // 2, size - 1, 255, 256, 700} & set(range(size)):
                got = inclusion_proof(tree, index, size)
                assert got == inclusion_proof(hashes, index, size), (index, size)
            for old in {0, 1, 100, 256, 300, 512, size - 1, size} & set(range(size + 1)):
                got = consistency_proof(tree, old, size)
                assert got == consistency_proof(hashes, old, size), (old, size)


def test_tiles_give_the_roots_and_proofs_of_the_leaf_list(settings) -> None:
    hashes = _log(settings)
    with db.read_conn(settings.engine) as c:
        stored = dict(c.execute(sa.select(s.tiles.c.idx, s.tiles.c.hash)).all())
        assert stored == {t: root_hash(hashes[t * TILE : (t + 1) * TILE]) for t in range(N // TILE)}
        # The checkpoint at the full size reads the leaves of the last, partial tile only.
        tree = StoredTree(c, "acme", MONTH, N)
        assert tree.root() == root_hash(hashes)
        assert list(tree._blocks) == [N // TILE]
        with pytest.raises(MerkleError, match=f"tree size {N + 1} outside 0..{N}"):
            tlog.tree(c, "acme", MONTH, N + 1)
    _check_all(settings, hashes)


def test_missing_tiles_are_computed_from_the_leaves(settings) -> None:
    hashes = _log(settings, seed=1)
    db.write_tx(settings.engine, lambda c: c.execute(s.tiles.delete().where(s.tiles.c.idx.in_([0, 3]))))
    _check_all(settings, hashes)


def test_ingest_writes_tiles_and_migration_0007_backfills_them(settings, tools) -> None:
    agent = tools.Agent("a")
    t0 = 1_796_083_200  # 2026-12-01
    tools.enrol(settings, "acme", agent, t0 - 86400)
    lines = [agent.beat(t0 + 60 * i, {"TR7-A": "running"}) for i in range(TILE + 50)]
    for part in (lines[:200], lines[200:]):  # the tile is completed by the second batch
        assert {r["status"] for r in ingest_lines(settings.engine, part, now=t0 + 86400)} == {"accepted"}
    with db.read_conn(settings.engine) as c:
        month = c.execute(sa.select(s.logs.c.month)).scalar_one()
        q = sa.select(s.leaves.c.leaf_hash).order_by(s.leaves.c.idx)
        leaves = [bytes(h) for h in c.execute(q).scalars()]
        tiles = c.execute(sa.select(s.tiles.c.idx, s.tiles.c.hash)).all()
        state = c.execute(sa.select(s.logs.c.tile_peaks)).scalar_one()
    assert tiles == [(0, root_hash(leaves[:TILE]))]
    # The log's row holds the partial tile's state: its size and its 50 leaves' peaks (32 + 16 + 2).
    assert bytes(state) == tile_state(TILE + 50, MerkleAccumulator.from_hashes(leaves[TILE:]))
    note = db.write_tx(settings.engine, lambda c: tlog.checkpoint(c, settings, "acme", month))
    assert note.split("\n")[2] == __import__("base64").b64encode(root_hash(leaves)).decode()

    for target in ("0006_capacities_hourly", "head"):
        tools.migrate_to(settings, target)
        with settings.engine.connect() as conn:
            assert ("tiles" in sa.inspect(conn).get_table_names()) == (target == "head")
    with db.read_conn(settings.engine) as c:
        assert c.execute(sa.select(s.tiles.c.idx, s.tiles.c.hash)).all() == tiles
        assert bytes(c.execute(sa.select(s.logs.c.tile_peaks)).scalar_one()) == bytes(state)
