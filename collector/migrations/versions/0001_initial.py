"""Initial schema of the collector."""

from alembic import op

from collector import schema

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The first revision is the schema module as of this revision; later revisions are explicit
    # op.* steps so that an old database and a new one always converge.
    schema.metadata.create_all(op.get_bind())


def downgrade() -> None:
    schema.metadata.drop_all(op.get_bind())
