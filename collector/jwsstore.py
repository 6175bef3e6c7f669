"""How `leaves.jws` is stored: an LZ4 frame of the exact text (SQLite: in a TEXT column, PostgreSQL: bytea).

Why (docs/performance.md, "Verification and ingest performance" and "Ninth pass"): a
heartbeat of 50 observations is ~10 kB of JWS text. SQLite does not compress: writing the text
cost ~44 us of CPU a row (overflow pages, WAL frames, checkpoint copies), its 1.6 kB LZ4 frame
~12 us plus ~4 us to compress. PostgreSQL compressed the text itself (TOAST, lz4), in its own
process on the same cores: sending it the frame instead (migration 0013) took ~9 us a heartbeat
off the server's CPU and none was added to the collector's, whose compressing costs what sending
8.5 kB less through the driver and the socket saves. The frame is the standard LZ4 frame format
(the `lz4` command line reads it), lossless: every reader gets the exact text back, and the
Merkle leaf is the hash of that text, not of the stored bytes.

Rows written before: text on SQLite (before migration 0003's time), and on PostgreSQL the
text's own ASCII bytes (migration 0013 changed the column's type, not its values). Both read
back unchanged: a JWS begins with "eyJ", never with the frame's magic number.
"""

from typing import Any

import lz4.frame
import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeEngine

# What a leaf's `jws` reads as once `tr7-collector prune` dropped it (collector/prune.py): it is
# written as '', zero bytes on either engine, never a frame nor a JWS.
PRUNED = ""
FRAME_MAGIC = b"\x04\x22\x4d\x18"  # an LZ4 frame's first four bytes (0x184D2204, little-endian)


def pack(text: str, raw: bytes | None = None) -> bytes:
    """The stored form of one JWS line (``raw``: its ASCII bytes, if the caller has them already)."""
    packed: bytes = lz4.frame.compress(text.encode("ascii") if raw is None else raw)  # lz4 has no types
    return packed


def unpack(value: str | bytes | memoryview) -> str:
    """The JWS text of a stored value, whichever form it was written in."""
    if isinstance(value, str):
        return value
    value = bytes(value)
    if value[:4] == FRAME_MAGIC:
        jws: bytes = lz4.frame.decompress(value)
        return jws.decode("ascii")
    return value.decode("ascii")


class StoredJws(sa.types.TypeDecorator[str]):
    """`leaves.jws` as SQLAlchemy Core sees it: always the JWS text. The DDL type is TEXT on SQLite
    (a column of TEXT affinity keeps a BLOB as it is) and bytea on PostgreSQL (text cannot hold
    bytes)."""

    impl = sa.Text
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(sa.LargeBinary())
        return dialect.type_descriptor(sa.Text())

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        return None if value is None else pack(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        return None if value is None else unpack(value)
