"""tiles: the hash of every complete 256-leaf subtree of each log, backfilled from `leaves`.

Why (also in docs/collector.md, "Storage"): a checkpoint, an inclusion proof and a consistency
proof each read every leaf hash of the month and hashed them all, ~2 s at a million leaves and,
on SQLite, through table pages that hold the JWS; a checkpoint did it holding the write lock.
With the tiles they read size/256 tile hashes and at most a few tiles' worth of leaf hashes.
Ingest writes the tiles it completes (collector/tiles.py) and keeps the peaks of the partial
tile in `logs.tile_peaks`, so it never reads leaves back. `leaves` is not touched.
"""

import logging

import sqlalchemy as sa
from alembic import op

from collector.tiles import TILE, fold, tile_state
from protocol.merkle import MerkleAccumulator

revision = "0007_tiles"
down_revision = "0006_capacities_hourly"
branch_labels = None
depends_on = None

log = logging.getLogger("alembic.runtime.migration")


def upgrade() -> None:
    bind = op.get_bind()
    if "tiles" in sa.inspect(bind).get_table_names():
        return  # a new database: revision 0001 created the schema module as it is now
    op.add_column("logs", sa.Column("tile_peaks", sa.LargeBinary, nullable=True))
    meta = sa.MetaData()
    tiles = sa.Table(
        "tiles",
        meta,
        sa.Column("provider", sa.String, primary_key=True),
        sa.Column("month", sa.String(7), primary_key=True),
        sa.Column("idx", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("hash", sa.LargeBinary(32), nullable=False),
    )
    tiles.create(bind)
    leaves = sa.Table("leaves", meta, autoload_with=bind)
    logs = sa.Table("logs", meta, autoload_with=bind)
    for provider, month, size in bind.execute(
        sa.select(logs.c.provider, logs.c.month, logs.c.size).order_by(logs.c.provider, logs.c.month)
    ).all():
        log.info("tiles: %s %s, %d leaves", provider, month, int(size))
        q = (
            sa.select(leaves.c.leaf_hash)
            .where(leaves.c.provider == provider, leaves.c.month == month, leaves.c.idx < size)
            .order_by(leaves.c.idx)
            .execution_options(yield_per=TILE * 64)
        )
        done, acc = fold(MerkleAccumulator(), 0, (bytes(h) for h in bind.execute(q).scalars()))
        n = len(done) * TILE + acc.size
        if n != size:  # leaf indexes are 0..size-1 by construction; say so if not
            raise RuntimeError(f"log {provider} {month}: size {size}, {n} leaves stored")
        if done:
            bind.execute(tiles.insert(), [{"provider": provider, "month": month, "idx": t, "hash": h}
                                          for t, h in done])
        bind.execute(
            logs.update()
            .where(logs.c.provider == provider, logs.c.month == month)
            .values(tile_peaks=tile_state(int(size), acc))
        )


def downgrade() -> None:
    op.drop_table("tiles")
    with op.batch_alter_table("logs") as batch:
        batch.drop_column("tile_peaks")
