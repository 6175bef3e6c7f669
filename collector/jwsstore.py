"""How `leaves.jws` is stored: an LZ4 frame on SQLite, plain text on PostgreSQL (TOAST lz4 there).

Why (docs/protocol-decisions.md, "Verification and ingest performance"): a heartbeat of 50
observations is ~10 kB of JWS text and SQLite does not compress; writing it cost ~44 us of CPU a
row (overflow pages, WAL frames, checkpoint copies), its 1.6 kB LZ4 frame ~12 us plus ~4 us to
compress. The frame is the standard LZ4 frame format (the `lz4` command line reads it), lossless:
every reader gets the exact text back, and the Merkle leaf is the hash of that text, not of the
stored bytes. Rows written as text (before this, or by hand) read back unchanged.
"""

from typing import Any

import lz4.frame
import sqlalchemy as sa
from sqlalchemy.engine import Dialect


def pack(dialect_name: str, text: str, raw: bytes | None = None) -> str | bytes:
    """The stored form of one JWS line for a database dialect (``raw``: its ASCII bytes, if the
    caller has them already)."""
    if dialect_name == "sqlite":
        return lz4.frame.compress(text.encode("ascii") if raw is None else raw)
    return text


def unpack(value: str | bytes | memoryview) -> str:
    """The JWS text of a stored value, whichever form it was written in."""
    if isinstance(value, str):
        return value
    return lz4.frame.decompress(value).decode("ascii")


class StoredJws(sa.types.TypeDecorator[str]):
    """`leaves.jws` as SQLAlchemy Core sees it: always the JWS text (the DDL type stays TEXT; a
    SQLite column of TEXT affinity keeps a BLOB as it is)."""

    impl = sa.Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        return None if value is None else pack(dialect.name, value)

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        return None if value is None else unpack(value)
