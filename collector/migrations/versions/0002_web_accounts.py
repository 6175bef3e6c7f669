"""Accounts (billing-v1.md §8) and the web pages' users and sessions."""

from alembic import op

from collector.accounts.store import TABLES as ACCOUNT_TABLES
from collector.schema import metadata
from collector.web.tables import TABLES as WEB_TABLES

revision = "0002_web_accounts"
down_revision = "0001"
branch_labels = None
depends_on = None

TABLES = [*ACCOUNT_TABLES, *WEB_TABLES]


def upgrade() -> None:
    # checkfirst: revision 0001 creates the metadata as imported, which on a new database already
    # holds these tables (Alembic imports every revision before running the first one).
    metadata.create_all(op.get_bind(), tables=TABLES, checkfirst=True)


def downgrade() -> None:
    metadata.drop_all(op.get_bind(), tables=TABLES, checkfirst=True)
