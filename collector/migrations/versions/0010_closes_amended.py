"""closes: a closed month's catalog as amended for its late heartbeats (`tr7-collector amend`).

Why (also in docs/collector.md, "Guarantees"): a closed month keeps the catalog it was closed
with, also for the adjustment lines of its late heartbeats; one late heartbeat in an hour that
catalog could not price (a capacity without a rate) blocked the next month's invoice and close,
and the month's export, for good: no apply could reach the frozen catalog. The amendment may
only price what the close did not see (the frozen documents recomputed with it are unchanged).
"""

import sqlalchemy as sa
from alembic import op

revision = "0010_closes_amended"
down_revision = "0009_closes_frozen_inputs"
branch_labels = None
depends_on = None


def upgrade() -> None:
    have = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("closes")}
    if "amended_doc" in have:
        return  # a new database: revision 0001 created the schema module as it is now
    with op.batch_alter_table("closes") as batch:
        batch.add_column(sa.Column("amended_doc", sa.Text, nullable=True))
        batch.add_column(sa.Column("amended_at", sa.BigInteger, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("closes") as batch:
        batch.drop_column("amended_at")
        batch.drop_column("amended_doc")
