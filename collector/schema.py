"""The collector's tables (SQLAlchemy Core), the same on SQLite and PostgreSQL.

Times are epoch seconds (BIGINT, UTC). Raw evidence (`leaves.jws`) is written once and never
updated (on SQLite as an LZ4 frame of the exact text: collector/jwsstore.py); everything billing
reads at scale is in the small `leaves` columns and the hour aggregates (`days`, `capacities`).
"""

import sqlalchemy as sa

from collector.jwsstore import StoredJws

metadata = sa.MetaData()
BIG = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite rowid aliasing wants INTEGER

meta = sa.Table(
    "meta",
    metadata,
    sa.Column("key", sa.String, primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

providers = sa.Table(
    "providers",
    metadata,
    sa.Column("id", sa.String, primary_key=True),
    sa.Column("name", sa.String),
    sa.Column("currency", sa.String),
    sa.Column("created_at", sa.BigInteger, nullable=False),
)

# Every catalog ever applied, whole; the latest row of a provider is its desired state.
# `retroactive`: applied with --retroactive, a deliberate correction of hours already billed in
# an open month (collector/catalogdiff.py); migration 0005.
catalogs = sa.Table(
    "catalogs",
    metadata,
    sa.Column("id", BIG, primary_key=True, autoincrement=True),
    sa.Column("provider", sa.String, nullable=False, index=True),
    sa.Column("applied_at", sa.BigInteger, nullable=False),
    sa.Column("digest", sa.String(64), nullable=False),
    sa.Column("doc", sa.Text, nullable=False),
    sa.Column("retroactive", sa.Boolean, nullable=False, server_default=sa.false()),
)

agents = sa.Table(
    "agents",
    metadata,
    sa.Column("kid", sa.String(32), primary_key=True),
    sa.Column("provider", sa.String, nullable=False, index=True),
    sa.Column("name", sa.String, nullable=False),
    sa.Column("public_key", sa.String, nullable=False),
    sa.Column("enrolled_at", sa.BigInteger, nullable=False),
    sa.Column("revoked_at", sa.BigInteger),
)

# Enrolment tokens and API tokens are stored as SHA-256 digests only: shown once, never readable.
enroll_tokens = sa.Table(
    "enroll_tokens",
    metadata,
    sa.Column("digest", sa.String(64), primary_key=True),
    sa.Column("provider", sa.String, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("expires_at", sa.BigInteger, nullable=False),
    sa.Column("used_at", sa.BigInteger),
    sa.Column("kid", sa.String(32)),
)

api_tokens = sa.Table(
    "api_tokens",
    metadata,
    sa.Column("digest", sa.String(64), primary_key=True),
    sa.Column("provider", sa.String),  # NULL = the vendor
    sa.Column("role", sa.String, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
)

# One counter row per (provider, month) log: locking it serialises leaf index allocation.
logs = sa.Table(
    "logs",
    metadata,
    sa.Column("provider", sa.String, primary_key=True),
    sa.Column("month", sa.String(7), primary_key=True),
    sa.Column("size", sa.BigInteger, nullable=False),
    # The log size, then the peaks (protocol.merkle.MerkleAccumulator) of its last, partial
    # 256-leaf tile, so the ingest that completes it need not read its first leaves back
    # (collector/tiles.py); NULL or for another size: they are read back.
    sa.Column("tile_peaks", sa.LargeBinary, nullable=True),
    # When `tr7-collector prune` dropped the month's evidence (collector/prune.py, migration
    # 0015): ingest refuses its new lines from then on (read with the size, under the same lock).
    sa.Column("pruned_at", sa.BigInteger, nullable=True),
)

# PostgreSQL's autovacuum for the tables that grow by inserts: after every 10,000 new rows, not
# after 20% of the table (the default), which once a table holds a few months left most of the
# current month's pages without their visibility-map bit. Billing's chain rules read `leaves` by
# an index-only scan, and each row of a page without it is fetched from the table too: a month
# of 57,600 leaves took 60 ms as ingested and 45 ms once vacuumed (migration 0014). A vacuum of
# an insert-only table reads only the pages added since the last one.
VACUUM_AFTER_INSERTS = {
    "autovacuum_vacuum_insert_scale_factor": 0,
    "autovacuum_vacuum_insert_threshold": 10_000,
}

leaves = sa.Table(
    "leaves",
    metadata,
    sa.Column("provider", sa.String, primary_key=True),
    sa.Column("month", sa.String(7), primary_key=True),
    sa.Column("idx", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("digest", sa.String(64), nullable=False),
    sa.Column("leaf_hash", sa.LargeBinary(32), nullable=False),
    sa.Column("kid", sa.String(32), nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("prev", sa.String(64), nullable=False),
    sa.Column("time", sa.BigInteger, nullable=False),
    sa.Column("interval", sa.Integer, nullable=False),
    sa.Column("received_at", sa.BigInteger, nullable=False),
    sa.Column("jws", StoredJws, nullable=False),
    # The dedup key (migration 0012): one JWS has one kid, seq and month, so this is unique exactly
    # where the digest is, and a key's leaves sit side by side in it (a unique index on the digest
    # alone wrote a random page a leaf). Its (kid, month, seq) prefix serves the chain queries.
    sa.Index("ux_leaves_kid_month_seq", "kid", "month", "seq", "digest", unique=True),
    sa.Index("ix_leaves_pm_time", "provider", "month", "time"),
    # Covers the chain rules run by the database (collector/chainsql.py): a key's leaves in seq
    # order and each leaf's predecessor found without reading the rows (which hold the JWS).
    sa.Index("ix_leaves_chain", "provider", "month", "kid", "seq", "time", "prev", "digest", "idx"),
    postgresql_with=VACUUM_AFTER_INSERTS,
)

# The hash of each complete 256-leaf subtree of a log (collector/tiles.py), written with the leaves
# that complete it: checkpoints and proofs read size/256 of these, not every leaf (migration 0007).
tiles = sa.Table(
    "tiles",
    metadata,
    sa.Column("provider", sa.String, primary_key=True),
    sa.Column("month", sa.String(7), primary_key=True),
    sa.Column("idx", sa.BigInteger, primary_key=True, autoincrement=False),  # leaves 256 idx ..
    sa.Column("hash", sa.LargeBinary(32), nullable=False),
)

# Spool lag per (provider, month, agent key): the leaves appended, the sum and the maximum of their
# received_at - time, kept by ingest so the agents page need not read the month's rows (which hold
# the JWS). The leaves of a log add up to its size; where they do not (an older collector appended
# meanwhile), readers fall back to the leaves (collector/web/detail.py, migration 0008).
spool_lag = sa.Table(
    "spool_lag",
    metadata,
    sa.Column("provider", sa.String, primary_key=True),
    sa.Column("month", sa.String(7), primary_key=True),
    sa.Column("kid", sa.String(32), primary_key=True),
    sa.Column("beats", sa.BigInteger, nullable=False),
    sa.Column("lag_sum", sa.BigInteger, nullable=False),
    sa.Column("lag_max", sa.BigInteger, nullable=False),
)

# Hour aggregate, one row per (provider, UTC day, instance, vm): bit h of `active` / `seen` is the
# hour h of that day (24 bits). 2,000 instances x 1 month = 60,000 rows, updated with bitwise OR.
# Keeping the vm makes the clone alert (one instance on two vms in one hour) a query.
days = sa.Table(
    "days",
    metadata,
    sa.Column("provider", sa.String, primary_key=True),
    sa.Column("day", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("instance", sa.String, primary_key=True),
    sa.Column("vm", sa.String, primary_key=True),
    sa.Column("active", sa.BigInteger, nullable=False),
    sa.Column("seen", sa.BigInteger, nullable=False),
    postgresql_with=VACUUM_AFTER_INSERTS,
)

# Declared capacities: one row per (provider, day, instance, capacity, hour), the observation times
# as offsets in the day, comma separated (billing reads them only for instances with fixed hours).
# A row per hour, not per day: every ingest appends to the rows it touches, and a day-long row
# (1,440 offsets by midnight) was rewritten whole by each heartbeat (migration 0006).
capacities = sa.Table(
    "capacities",
    metadata,
    sa.Column("provider", sa.String, primary_key=True),
    sa.Column("day", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("instance", sa.String, primary_key=True),
    sa.Column("cap", sa.String, primary_key=True),  # JSON [bundle, bandwidth_mbps, vservices]
    sa.Column("hour", sa.SmallInteger, primary_key=True, autoincrement=False),  # offsets // 3600
    sa.Column("offsets", sa.Text, nullable=False),
    postgresql_with=VACUUM_AFTER_INSERTS,
)

checkpoints = sa.Table(
    "checkpoints",
    metadata,
    sa.Column("provider", sa.String, primary_key=True),
    sa.Column("month", sa.String(7), primary_key=True),
    sa.Column("size", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("root", sa.LargeBinary(32), nullable=False),
    sa.Column("note", sa.Text, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
)

closes = sa.Table(
    "closes",
    metadata,
    sa.Column("provider", sa.String, primary_key=True),
    sa.Column("month", sa.String(7), primary_key=True),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("checkpoint", sa.Text, nullable=False),
    sa.Column("catalog_id", sa.BigInteger, nullable=False),
    sa.Column("usage", sa.Text, nullable=False),
    sa.Column("invoice", sa.Text, nullable=False),  # the month's own result (audit bundle closed/)
    sa.Column("billed", sa.Text, nullable=False),  # what was invoiced: own result + adjustment lines
    sa.Column("closed_at", sa.BigInteger, nullable=False),
    # The inputs of the frozen documents, so that the month's bundle reproduces them for good
    # (migration 0009; NULL in closes made before it): the catalog as billed, downgraded periods
    # recorded by then included, and the size of the month before's log its anchors came from.
    sa.Column("catalog_doc", sa.Text, nullable=True),
    sa.Column("anchor_size", sa.BigInteger, nullable=True),
    # The catalog as amended for the month's late heartbeats (`tr7-collector amend`, migration
    # 0010): the frozen documents recomputed with it are unchanged; adjustments use it.
    sa.Column("amended_doc", sa.Text, nullable=True),
    sa.Column("amended_at", sa.BigInteger, nullable=True),
)

# What has been invoiced so far for a month: its frozen invoice, replaced by its current one
# each time its adjustment lines are frozen into a later month's close.
baselines = sa.Table(
    "baselines",
    metadata,
    sa.Column("provider", sa.String, primary_key=True),
    sa.Column("month", sa.String(7), primary_key=True),
    sa.Column("invoice", sa.Text, nullable=False),
    sa.Column("set_at", sa.BigInteger, nullable=False),
    # The month's log size that invoice was computed over (migration 0011; null before): `amend`
    # recomputes at it, so a fork logged since cannot read as a repricing of what was invoiced.
    sa.Column("size", sa.BigInteger, nullable=True),
)

# What each `tr7-collector prune` archived and dropped (collector/prune.py, migration 0015): the
# bundle written and verified before the month's JWS were dropped, and the SHA-256 of its
# manifest.json, which names every file's SHA-256: the archive's identity, for its custodian.
prunes = sa.Table(
    "prunes",
    metadata,
    sa.Column("provider", sa.String, primary_key=True),
    sa.Column("month", sa.String(7), primary_key=True),
    sa.Column("pruned_at", sa.BigInteger, nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),  # the log's size, the bundle's lines
    sa.Column("archive", sa.Text, nullable=False),  # where the bundle was written
    sa.Column("manifest_sha256", sa.String(64), nullable=False),
    sa.Column("kept", sa.BigInteger, nullable=False),  # leaves whose JWS stay (anchors, quarantine)
    sa.Column("done_at", sa.BigInteger, nullable=True),  # every other JWS dropped; NULL: cut short
)

# Lines ingest rejected, by provider ('' when no enrolled key names one: unparsable lines, unknown
# kids) and rule (collector/ingest.py, migration 0016): rejections are not evidence and are not
# stored, but an operator watches their count (GET /metrics, collector/metrics.py).
rejections = sa.Table(
    "rejections",
    metadata,
    sa.Column("provider", sa.String, primary_key=True),
    sa.Column("rule", sa.String, primary_key=True),
    sa.Column("lines", sa.BigInteger, nullable=False),
    sa.Column("last_at", sa.BigInteger, nullable=False),  # the latest batch's receipt time
)
