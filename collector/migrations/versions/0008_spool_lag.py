"""spool_lag: per (provider, month, agent key) the count, sum and maximum of received_at - time.

Why (also in docs/collector.md, "Storage"): the agents page's spool-lag column grouped the month's
`leaves` rows, which hold the JWS: ~1.5 us a leaf on SQLite, seconds a minute for a month of 40
agents polling every minute. Ingest now keeps these sums; this backfills them from `leaves` with
one grouped INSERT ... SELECT. `leaves` is not touched.
"""

import logging

import sqlalchemy as sa
from alembic import op

revision = "0008_spool_lag"
down_revision = "0007_tiles"
branch_labels = None
depends_on = None

log = logging.getLogger("alembic.runtime.migration")


def upgrade() -> None:
    bind = op.get_bind()
    if "spool_lag" in sa.inspect(bind).get_table_names():
        return  # a new database: revision 0001 created the schema module as it is now
    meta = sa.MetaData()
    spool_lag = sa.Table(
        "spool_lag",
        meta,
        sa.Column("provider", sa.String, primary_key=True),
        sa.Column("month", sa.String(7), primary_key=True),
        sa.Column("kid", sa.String(32), primary_key=True),
        sa.Column("beats", sa.BigInteger, nullable=False),
        sa.Column("lag_sum", sa.BigInteger, nullable=False),
        sa.Column("lag_max", sa.BigInteger, nullable=False),
    )
    spool_lag.create(bind)
    leaves = sa.Table("leaves", meta, autoload_with=bind)
    lag = leaves.c.received_at - leaves.c.time
    log.info("spool_lag: summing the received_at - time of every leaf (one pass over `leaves`)")
    done = bind.execute(
        spool_lag.insert().from_select(
            ["provider", "month", "kid", "beats", "lag_sum", "lag_max"],
            sa.select(
                leaves.c.provider, leaves.c.month, leaves.c.kid,
                sa.func.count(), sa.func.sum(lag), sa.func.max(lag),
            ).group_by(leaves.c.provider, leaves.c.month, leaves.c.kid),
        )
    )
    log.info("spool_lag: %d rows", done.rowcount)


def downgrade() -> None:
    op.drop_table("spool_lag")
