"""The agents page's spool lag (max and mean of received_at - time per key) comes from the sums
ingest keeps in `spool_lag`, equals the same figures grouped from the leaves, falls back to the
leaves when the sums do not add up to the log's size, and migration 0008 backfills them."""

import sqlalchemy as sa

from collector import db
from collector import schema as s
from collector.ingest import ingest_lines
from collector.web.detail import spool_lags

T0 = 1_796_083_200  # 2026-12-01T00:00:00Z
MONTH = "2026-12"


def _from_leaves(settings) -> dict[str, tuple[int, int]]:
    L = s.leaves.c
    lag = L.received_at - L.time
    with db.read_conn(settings.engine) as c:
        rows = c.execute(
            sa.select(L.kid, sa.func.max(lag), sa.func.sum(lag), sa.func.count()).group_by(L.kid)
        ).all()
    return {kid: (int(mx), round(int(total) / n)) for kid, mx, total, n in rows}


def _lags(settings) -> dict[str, tuple[int, int]]:
    with db.read_conn(settings.engine) as c:
        return spool_lags(c, "acme", MONTH)


def _ingest(settings, tools) -> tuple[str, str]:
    """Two agents; batches received at different times; a replay and a line twice in one batch."""
    a, b = tools.Agent("a"), tools.Agent("b")
    for agent in (a, b):
        tools.enrol(settings, "acme", agent, T0 - 86400)
    la = [a.beat(T0 + 600 * i, {"TR7-A": "running"}) for i in range(12)]
    lb = [b.beat(T0 + 600 * i, {"TR7-B": "running"}) for i in range(5)]
    # a's spool drained late (lags 5,400 .. 3,000, then 4,799 .. 1,199); b's three first ones late
    # (one of them twice in its batch), its last two promptly (607 and 7 s)
    got = ingest_lines(settings.engine, la[:5], now=T0 + 5400)
    got += ingest_lines(settings.engine, la[5:] + lb[:3] + [lb[2]], now=T0 + 7799)
    got += ingest_lines(settings.engine, la[:5] + lb[3:], now=T0 + 2400 + 7)  # a's replay: duplicates
    assert [r["status"] for r in got].count("accepted") == 17
    return a.key.kid, b.key.kid


def test_ingest_keeps_the_lag_sums_of_appended_leaves(settings, tools) -> None:
    ka, kb = _ingest(settings, tools)
    expected = _from_leaves(settings)
    assert expected == {ka: (5400, 3499), kb: (7799, 4442)}  # 41,993 / 12 and 22,211 / 5
    assert _lags(settings) == expected
    with db.read_conn(settings.engine) as c:
        rows = c.execute(sa.select(s.spool_lag).order_by(s.spool_lag.c.kid)).all()
    assert sorted((r.kid, r.beats) for r in rows) == sorted([(ka, 12), (kb, 5)])
    # The page reads the sums, not the leaves: a changed sum shows.
    db.write_tx(settings.engine, lambda c: c.execute(
        s.spool_lag.update().where(s.spool_lag.c.kid == ka).values(lag_max=99_999)))
    assert _lags(settings)[ka] == (99_999, 3499)


def test_sums_that_do_not_add_up_to_the_log_are_not_trusted(settings, tools) -> None:
    ka, kb = _ingest(settings, tools)
    expected = _from_leaves(settings)
    # An older collector appended b's leaves without the sums: the leaves are read instead.
    db.write_tx(settings.engine, lambda c: c.execute(s.spool_lag.delete().where(s.spool_lag.c.kid == kb)))
    db.write_tx(settings.engine, lambda c: c.execute(
        s.spool_lag.update().where(s.spool_lag.c.kid == ka).values(lag_max=99_999)))
    assert _lags(settings) == expected
    db.write_tx(settings.engine, lambda c: c.execute(s.spool_lag.delete()))
    assert _lags(settings) == expected
    with db.read_conn(settings.engine) as c:
        assert spool_lags(c, "acme", "2026-11") == {}


def test_migration_0008_backfills_the_sums(settings, tools) -> None:
    _ingest(settings, tools)
    with db.read_conn(settings.engine) as c:
        before = sorted(tuple(r) for r in c.execute(sa.select(s.spool_lag)).all())
    for target in ("0007_tiles", "head"):
        tools.migrate_to(settings, target)
        with settings.engine.connect() as conn:
            assert ("spool_lag" in sa.inspect(conn).get_table_names()) == (target == "head")
    with db.read_conn(settings.engine) as c:
        assert sorted(tuple(r) for r in c.execute(sa.select(s.spool_lag)).all()) == before
