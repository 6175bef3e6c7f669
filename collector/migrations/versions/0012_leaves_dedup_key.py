"""leaves: the dedup key is unique (kid, month, seq, digest), not a unique digest.

Why (also in docs/performance.md, "Eighth pass"): a digest is random, so every leaf
appended went to a random page of the digest's unique index: one page written a leaf (~10 us a
heartbeat of the collector's CPU on SQLite, and random I/O once the index outgrows memory),
where a key's leaves sit side by side in (kid, month, seq, digest). One JWS has one kid, seq and
month (of its time), so the new key is unique exactly where the digest is. It replaces the
(kid, month, seq) index, its prefix.

On SQLite a table's UNIQUE constraint goes only with the table: `leaves` is copied once (the
JWS rows as they are; 200,000 leaves, 496 MB, took 9 s: allow about a minute a million, and
the disk space of a second copy until it ends; it says so on stderr from 10,000 rows). On
PostgreSQL the constraint is dropped and the index built in place.
"""

import sys

import sqlalchemy as sa
from alembic import op

revision = "0012_leaves_dedup_key"
down_revision = "0011_baselines_size"
branch_labels = None
depends_on = None

KEY = "ux_leaves_kid_month_seq"
KEY_COLUMNS = ["kid", "month", "seq", "digest"]
OLD_INDEX = "ix_leaves_kid_month"
# A UNIQUE of SQLite's has no name unless given one: reflected, it gets this one to be dropped by.
NAMING = {"uq": "uq_%(table_name)s_%(column_0_name)s"}


def upgrade() -> None:
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    if KEY in {ix["name"] for ix in inspector.get_indexes("leaves")}:
        return  # a new database: revision 0001 created the schema module as it is now
    uniques = inspector.get_unique_constraints("leaves")
    unique = [u["name"] for u in uniques if u["column_names"] == ["digest"]]
    if bind.dialect.name == "sqlite":
        rows = bind.exec_driver_sql("SELECT count(*) FROM leaves").scalar() or 0
        if rows >= 10_000:  # say why the first start of this release is slow
            print(f"tr7-collector: migration 0012 copies the {rows:,} rows of leaves once (about a "
                  "minute a million) ...", file=sys.stderr, flush=True)
    with op.batch_alter_table("leaves", naming_convention=NAMING) as batch:
        for name in unique:
            batch.drop_constraint(name or "uq_leaves_digest", type_="unique")
        batch.drop_index(OLD_INDEX)
        batch.create_index(KEY, KEY_COLUMNS, unique=True)


def downgrade() -> None:
    with op.batch_alter_table("leaves") as batch:
        batch.drop_index(KEY)
        batch.create_index(OLD_INDEX, ["kid", "month", "seq"])
        batch.create_unique_constraint("leaves_digest_key", ["digest"])  # PostgreSQL's own name for it
