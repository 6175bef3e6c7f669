"""PostgreSQL: `leaves.jws` is bytea, and new rows hold the LZ4 frame of the JWS, as on SQLite.

Why (also in collector/jwsstore.py and docs/performance.md, "Ninth pass"): PostgreSQL
compressed each ~10 kB JWS text itself (TOAST, lz4), in its own process on the cores the
collector shares: sending it the 1.6 kB frame took ~9 us a heartbeat off the server's CPU and
added none to the collector's. A text column cannot hold the frame's bytes.

The rows already stored keep their value: their text becomes its own ASCII bytes (convert_to),
which read back as the same text (a JWS never begins with the frame's magic number). The type
change rewrites the table once, with its indexes, under an exclusive lock (ingest waits; agents
keep their heartbeats spooled and retry): 200,000 leaves (512 MB) took 11 s here, about a
minute a million, and the disk space of a second copy until it ends; it says so on stderr
from 10,000 rows. Nothing to do on SQLite, whose TEXT column holds frames already (jwsstore,
since migration 0003's time).

Downgrade turns every frame back into its text (read and written back in chunks by this
process, as SQL cannot inflate LZ4), then the column into text.
"""

import sys

import lz4.frame
import sqlalchemy as sa
from alembic import op

revision = "0013_leaves_jws_bytea"
down_revision = "0012_leaves_dedup_key"
branch_labels = None
depends_on = None

MAGIC = b"\x04\x22\x4d\x18"  # collector/jwsstore.FRAME_MAGIC, repeated: a migration is frozen
CHUNK = 2_000


def _type(bind: sa.Connection) -> str:
    return str(bind.exec_driver_sql(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
        " WHERE attrelid = 'leaves'::regclass AND attname = 'jws'"
    ).scalar())


def _say(bind: sa.Connection, what: str) -> None:
    rows = bind.exec_driver_sql("SELECT count(*) FROM leaves").scalar() or 0
    if rows >= 10_000:  # say why the first start of this release is slow
        print(f"tr7-collector: migration 0013 {what} the {rows:,} rows of leaves once (about a "
              "minute a million) ...", file=sys.stderr, flush=True)


def _keep_lz4(bind: sa.Connection) -> None:
    """A type change keeps the column's compression method; set again in case (0003's lz4)."""
    try:
        with bind.begin_nested():
            bind.exec_driver_sql("ALTER TABLE leaves ALTER COLUMN jws SET COMPRESSION lz4")
    except sa.exc.DBAPIError:
        pass  # a PostgreSQL built without lz4: 0003 warned already, pglz stays


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql" or _type(bind) == "bytea":
        return  # SQLite; or a new database: revision 0001 created the schema module as it is now
    _say(bind, "rewrites")
    bind.exec_driver_sql("ALTER TABLE leaves ALTER COLUMN jws TYPE bytea USING convert_to(jws, 'UTF8')")
    _keep_lz4(bind)


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql" or _type(bind) != "bytea":
        return
    _say(bind, "inflates and rewrites")
    select = sa.text(
        "SELECT provider, month, idx, jws FROM leaves WHERE substring(jws FROM 1 FOR 4) = :magic"
        " AND (provider, month, idx) > (:p, :m, :i) ORDER BY provider, month, idx LIMIT :n"
    )
    update = sa.text("UPDATE leaves SET jws = :jws WHERE provider = :p AND month = :m AND idx = :i")
    after = ("", "", -1)
    while rows := bind.execute(select, {"magic": MAGIC, "p": after[0], "m": after[1], "i": after[2],
                                        "n": CHUNK}).all():
        bind.execute(update, [
            {"jws": lz4.frame.decompress(r.jws), "p": r.provider, "m": r.month, "i": r.idx} for r in rows
        ])
        after = tuple(rows[-1][:3])
    bind.exec_driver_sql("ALTER TABLE leaves ALTER COLUMN jws TYPE text USING convert_from(jws, 'UTF8')")
    _keep_lz4(bind)
