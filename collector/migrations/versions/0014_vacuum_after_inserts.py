"""PostgreSQL: autovacuum `leaves`, `days` and `capacities` after every 10,000 inserted rows.

Why (collector/schema.py, VACUUM_AFTER_INSERTS; docs/performance.md, "Tenth pass"): by
default an insert-only table is vacuumed after 20% of its size is inserted again, so with a few
months stored most of the current month's pages lack their visibility-map bit, and billing's
index-only scans fetch every such row from the table as well. Storage parameters only: nothing is
rewritten, and the statement takes a moment whatever the table's size. Nothing to do on SQLite.
"""

from alembic import op

revision = "0014_vacuum_after_inserts"
down_revision = "0013_leaves_jws_bytea"
branch_labels = None
depends_on = None

TABLES = ("leaves", "days", "capacities")
# collector/schema.VACUUM_AFTER_INSERTS, repeated: a migration is frozen
SETTINGS = "autovacuum_vacuum_insert_scale_factor = 0, autovacuum_vacuum_insert_threshold = 10000"


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":  # a new database has them already (revision 0001); set again
        for table in TABLES:
            bind.exec_driver_sql(f"ALTER TABLE {table} SET ({SETTINGS})")


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        for table in TABLES:
            bind.exec_driver_sql(
                f"ALTER TABLE {table} RESET (autovacuum_vacuum_insert_scale_factor, "
                "autovacuum_vacuum_insert_threshold)"
            )
