"""leaves: an index covering the chain columns in (provider, month, kid, seq) order.

Why (also in docs/performance.md, "Bill-from-aggregates speed"): the chain rules run in
the database (collector/chainsql.py) as a scan of a month's leaves joined to each leaf's seq - 1;
from this index both are read without touching the rows, which hold the JWS. On SQLite, 2,000
instances x 1 month, that is ~0.05 s instead of ~0.18 s through the table.
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_leaves_chain_index"
down_revision = "0003_leaves_lz4"
branch_labels = None
depends_on = None

COLUMNS = ["provider", "month", "kid", "seq", "time", "prev", "digest", "idx"]


def upgrade() -> None:
    # Revision 0001 creates the schema module as imported: a new database already has it.
    if "ix_leaves_chain" not in {ix["name"] for ix in sa.inspect(op.get_bind()).get_indexes("leaves")}:
        op.create_index("ix_leaves_chain", "leaves", COLUMNS)


def downgrade() -> None:
    op.drop_index("ix_leaves_chain", table_name="leaves")
