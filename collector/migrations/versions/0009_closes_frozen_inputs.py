"""closes: the catalog as billed at the close and the size of the month before's log (anchors).

Why (also in docs/protocol-decisions.md): a closed month's bundle must reproduce its frozen
documents for good, but they were recomputed with the downgraded periods and the anchors of the
day of the export: a downgrade recorded after the close that reaches back into the month, or a
late heartbeat of the month before, made an honest bundle fail `tr7-audit verify`. Closes made
before this revision keep NULL (their inputs at the time were not recorded) and the old reading.
"""

import sqlalchemy as sa
from alembic import op

revision = "0009_closes_frozen_inputs"
down_revision = "0008_spool_lag"
branch_labels = None
depends_on = None


def upgrade() -> None:
    have = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("closes")}
    if "catalog_doc" in have:
        return  # a new database: revision 0001 created the schema module as it is now
    with op.batch_alter_table("closes") as batch:
        batch.add_column(sa.Column("catalog_doc", sa.Text, nullable=True))
        batch.add_column(sa.Column("anchor_size", sa.BigInteger, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("closes") as batch:
        batch.drop_column("anchor_size")
        batch.drop_column("catalog_doc")
