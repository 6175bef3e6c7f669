"""How `leaves.jws` is stored (collector/jwsstore.py, migration 0013): an LZ4 frame on both databases
(bytea on PostgreSQL), rows written before keep their text, every form reads back as the exact
JWS, and an audit bundle of a month converted both ways still verifies."""

import importlib
import time
from pathlib import Path

import lz4.frame
import pytest
import sqlalchemy as sa

from audit.verify import verify_bundle
from collector import db, ingest, jwsstore, registry
from collector import schema as s
from collector.export import export
from protocol.timefmt import month_of

H = 3600
BEFORE = "0012_leaves_dedup_key"


def _stored(settings) -> list:
    """The driver's own values of the column, in log order (no type processing)."""
    with settings.engine.connect() as c:
        return [r[0] for r in c.exec_driver_sql("SELECT jws FROM leaves ORDER BY month, idx")]


def _texts(settings) -> list[str]:
    with db.read_conn(settings.engine) as c:
        return list(c.execute(sa.select(s.leaves.c.jws).order_by(s.leaves.c.month, s.leaves.c.idx)).scalars())


def _column_type(settings) -> str:
    with settings.engine.connect() as c:
        col = next(x for x in sa.inspect(c).get_columns("leaves") if x["name"] == "jws")
        return type(col["type"]).__name__.upper()


def test_unpack_reads_every_stored_form() -> None:
    line = "eyJhbGciOiJFZERTQSJ9.eyJ2IjoxfQ.c2ln"
    frame = jwsstore.pack(line)
    assert frame[:4] == jwsstore.FRAME_MAGIC and lz4.frame.decompress(frame) == line.encode()
    # a frame (either database), text (SQLite before frames), the text's bytes (PostgreSQL
    # before migration 0013), and a memoryview of either as some drivers give bytea
    for value in (frame, line, line.encode(), memoryview(frame), memoryview(line.encode())):
        assert jwsstore.unpack(value) == line


def test_new_rows_are_frames_and_migration_0013_converts_both_ways(settings, tools, tmp_path: Path) -> None:
    now = int(time.time())
    t0 = now - 2 * H
    if month_of(t0 + 300) != month_of(t0):
        t0 -= 600  # the six beats in one month
    month = month_of(t0)
    a = tools.Agent("a")
    tools.enrol(settings, "acme", a, now - 10 * H)
    db.write_tx(settings.engine, lambda c: registry.apply_catalog(c, tools.catalog()))
    lines = [a.beat(t0 + 60 * i, {f"TR7-{j:04d}": "running" for j in range(40)}) for i in range(6)]
    assert [r["status"] for r in ingest.ingest_lines(settings.engine, lines[:2], now)] == ["accepted"] * 2
    pg = settings.engine.dialect.name == "postgresql"
    assert _column_type(settings) == ("BYTEA" if pg else "TEXT")
    for value, line in zip(_stored(settings), lines[:2], strict=True):
        assert bytes(value)[:4] == jwsstore.FRAME_MAGIC and len(value) < len(line) / 2
        assert lz4.frame.decompress(bytes(value)).decode("ascii") == line

    tools.migrate_to(settings, BEFORE)
    if pg:  # the frames are text again, as the release before reads them
        assert _column_type(settings) == "TEXT" and _stored(settings) == lines[:2]
        # a row that release writes: text
        with settings.engine.begin() as c:
            c.exec_driver_sql(
                "INSERT INTO leaves (provider, month, idx, digest, leaf_hash, kid, seq, prev, time, interval,"
                " received_at, jws) SELECT provider, month, 2, md5(digest) || md5(digest), leaf_hash, kid,"
                " seq + 100, prev, time, interval, received_at, jws FROM leaves WHERE idx = 1"
            )
    assert _texts(settings)[:2] == lines[:2]

    tools.migrate_to(settings, "head")
    assert _column_type(settings) == ("BYTEA" if pg else "TEXT")
    stored = _stored(settings)
    if pg:  # older rows keep their text, as its ASCII bytes; read back as the same text
        assert [bytes(v) for v in stored] == [x.encode("ascii") for x in (lines[0], lines[1], lines[1])]
        with settings.engine.begin() as c:
            c.exec_driver_sql("DELETE FROM leaves WHERE idx = 2")
        compression = settings.engine.connect().exec_driver_sql(
            "SELECT attcompression FROM pg_attribute WHERE attrelid = 'leaves'::regclass AND attname = 'jws'"
        ).scalar()
        assert compression == "l"  # migration 0003's lz4 for the older rows' text, kept
    assert _texts(settings)[:2] == lines[:2]
    res = ingest.ingest_lines(settings.engine, lines, now)
    assert [r["status"] for r in res] == ["duplicate"] * 2 + ["accepted"] * 4
    assert _texts(settings) == lines
    assert all(bytes(v)[:4] == jwsstore.FRAME_MAGIC for v in _stored(settings)[2:])

    # The evidence is the same JWS: the month's bundle verifies, and agrees with the aggregates.
    with db.read_conn(settings.engine) as c:
        path, agrees = export(c, settings, "acme", month, tmp_path / "bundle")
    report = verify_bundle(path, workers=1)
    assert agrees and report.ok, [f.to_json() for f in report.errors]
    assert (path / "heartbeats.jws").read_text().split() == lines


@pytest.mark.parametrize("rows", [0, 3])
def test_migration_0013_downgrade_inflates_every_frame(settings, tools, rows: int) -> None:
    """Chunked: more frames than one chunk of the downgrade are all turned back into text."""
    mig = importlib.import_module("collector.migrations.versions.0013_leaves_jws_bytea")
    now = int(time.time())
    a = tools.Agent("a")
    tools.enrol(settings, "acme", a, now - 10 * H)
    lines = [a.beat(now - 2 * H + 60 * i, {"TR7-1": "running"}) for i in range(rows)]
    if lines:
        ingest.ingest_lines(settings.engine, lines, now)
    old = mig.CHUNK
    mig.CHUNK = 2
    try:
        tools.migrate_to(settings, BEFORE)
    finally:
        mig.CHUNK = old
    if settings.engine.dialect.name == "postgresql":
        assert _stored(settings) == lines
    assert _texts(settings) == lines
    tools.migrate_to(settings, "head")
    assert _texts(settings) == lines
