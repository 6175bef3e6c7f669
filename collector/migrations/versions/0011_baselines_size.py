"""baselines: the month's log size each invoiced baseline was computed over.

Why (also in docs/collector.md, "Guarantees"): `tr7-collector amend` refuses a catalog that
reprices anything already invoiced for a closed month, by recomputing the month with it and
comparing the invoiced lines. Recomputed over the current log, a fork logged after the invoice
had quarantined invoiced hours and removed their line whatever the catalog: the amendment was
refused as a repricing. Recomputed over the leaves the baseline saw, it is not.
"""

import sqlalchemy as sa
from alembic import op

revision = "0011_baselines_size"
down_revision = "0010_closes_amended"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if "size" in {c["name"] for c in sa.inspect(op.get_bind()).get_columns("baselines")}:
        return  # a new database: revision 0001 created the schema module as it is now
    with op.batch_alter_table("baselines") as batch:
        batch.add_column(sa.Column("size", sa.BigInteger, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("baselines") as batch:
        batch.drop_column("size")
