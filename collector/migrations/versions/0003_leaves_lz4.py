"""PostgreSQL: the stored JWS text is TOAST-compressed with lz4 instead of pglz.

Why (also in docs/performance.md, "Verification and ingest performance"): measured on
3,000 heartbeats of 50 observations (9.4 kB of JWS each), pglz took 61 us per inserted row
and stored 1,541 bytes, lz4 16 us and 1,693 bytes, no compression 39 us and 9,403 bytes. The
server's CPU is shared with the collector processes, so this is ingest throughput. Values already
stored keep their pglz form (both are read transparently). Nothing to do on SQLite, which does not
compress; a PostgreSQL built without lz4 keeps pglz, with a notice in the log.
"""

import logging

import sqlalchemy as sa
from alembic import op

revision = "0003_leaves_lz4"
down_revision = "0002_web_accounts"
branch_labels = None
depends_on = None

log = logging.getLogger("alembic.runtime.migration")


def _set_compression(method: str) -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    try:
        with bind.begin_nested():  # a failed ALTER must not abort the migration's transaction
            bind.execute(sa.text(f"ALTER TABLE leaves ALTER COLUMN jws SET COMPRESSION {method}"))
    except sa.exc.DBAPIError as exc:
        log.warning("leaves.jws keeps its compression: %s", str(exc.orig).strip())


def upgrade() -> None:
    _set_compression("lz4")


def downgrade() -> None:
    _set_compression("pglz")
