"""catalogs: `retroactive`, true for a version applied as a deliberate correction of billed hours.

Why (also in docs/collector.md, "Catalog changes and billed history"): `tr7-collector apply`
refuses a catalog that changes the billing facts of hours already billed in an open month unless
`--retroactive` is given; the version stored then says so. Versions applied before this revision
were not checked and read false.
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_catalogs_retroactive"
down_revision = "0004_leaves_chain_index"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Revision 0001 creates the schema module as imported: a new database already has it.
    if "retroactive" not in {c["name"] for c in sa.inspect(op.get_bind()).get_columns("catalogs")}:
        op.add_column(
            "catalogs", sa.Column("retroactive", sa.Boolean, nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("catalogs") as batch:
        batch.drop_column("retroactive")
