"""`tr7-collector prune`: `logs.pruned_at` and the `prunes` table (collector/prune.py).

Why (docs/collector.md, "Pruning old months"): evidence is ~1.6 kB a heartbeat, ~70 MB a month
for one agent polling every minute, kept for ever until now. A closed month's bundle can be
archived, verified, and its JWS dropped from the database; ingest then refuses that month's new
lines, which it learns from the log's row it already reads and locks. Only new columns and a new
table: nothing is rewritten.
"""

import sqlalchemy as sa
from alembic import op

revision = "0015_prune"
down_revision = "0014_vacuum_after_inserts"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    if "pruned_at" not in {c["name"] for c in sa.inspect(bind).get_columns("logs")}:
        with op.batch_alter_table("logs") as batch:
            batch.add_column(sa.Column("pruned_at", sa.BigInteger, nullable=True))
    if not sa.inspect(bind).has_table("prunes"):  # a new database: revision 0001 made it
        op.create_table(
            "prunes",
            sa.Column("provider", sa.String, primary_key=True),
            sa.Column("month", sa.String(7), primary_key=True),
            sa.Column("pruned_at", sa.BigInteger, nullable=False),
            sa.Column("size", sa.BigInteger, nullable=False),
            sa.Column("archive", sa.Text, nullable=False),
            sa.Column("manifest_sha256", sa.String(64), nullable=False),
            sa.Column("kept", sa.BigInteger, nullable=False),
            sa.Column("done_at", sa.BigInteger, nullable=True),
        )


def downgrade() -> None:
    op.drop_table("prunes")
    with op.batch_alter_table("logs") as batch:
        batch.drop_column("pruned_at")
