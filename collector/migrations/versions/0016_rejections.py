"""The `rejections` table: lines ingest rejected, counted by provider and rule (GET /metrics).

Why (docs/collector.md, "Monitoring"): the collector kept no trace of what it refused but a log
line a batch; an operator watching Prometheus wants the count. A new table only.
"""

import sqlalchemy as sa
from alembic import op

revision = "0016_rejections"
down_revision = "0015_prune"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if not sa.inspect(op.get_bind()).has_table("rejections"):  # a new database: revision 0001 made it
        op.create_table(
            "rejections",
            sa.Column("provider", sa.String, primary_key=True),
            sa.Column("rule", sa.String, primary_key=True),
            sa.Column("lines", sa.BigInteger, nullable=False),
            sa.Column("last_at", sa.BigInteger, nullable=False),
        )


def downgrade() -> None:
    op.drop_table("rejections")
