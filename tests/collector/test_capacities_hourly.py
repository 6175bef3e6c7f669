"""Declared capacities are kept a row per hour (migration 0006): what ingest writes, and an old
database's day rows split into the same rows by the upgrade and merged back by the downgrade."""

import sqlalchemy as sa

from collector import schema as s
from collector.ingest import ingest_lines

H, DAY = 3600, 86400
T0 = 20_000 * DAY + 22 * H  # two hours before midnight: rows on two days
PRO = {"bundle": "pro", "bandwidth_mbps": 100, "vservices": 2}


def _ingest(settings, tools) -> None:
    agent = tools.Agent("a")
    tools.enrol(settings, "acme", agent, T0 - DAY)
    # Two requests, 20 minutes apart each beat: hours 22 and 23, then 0 and 1 of the next day;
    # the second request appends to the rows of hour 23 the first one wrote.
    beats = [agent.beat(T0 + k * 1200, {"TR7-A": "running"}, capacity=PRO) for k in range(12)]
    for part in (beats[:5], beats[5:]):
        assert {r["status"] for r in ingest_lines(settings.engine, part, now=T0 + DAY)} == {"accepted"}


def _rows(settings) -> list[tuple]:
    with settings.engine.connect() as c:
        cols = [c_ for c_ in s.capacities.c if c_.name != "offsets"]
        rows = c.execute(sa.select(s.capacities).order_by(*cols)).all()
    return [(r.day - T0 + T0 % DAY, r.instance, r.hour, sorted(map(int, r.offsets.split(",")))) for r in rows]


def test_ingest_keeps_a_row_per_hour(settings, tools) -> None:
    _ingest(settings, tools)
    m = [20 * 60 * k for k in range(3)]  # 0, 20, 40 minutes into an hour
    assert _rows(settings) == [
        (0, "TR7-A", 22, [22 * H + x for x in m]),
        (0, "TR7-A", 23, [23 * H + x for x in m]),
        (DAY, "TR7-A", 0, m),
        (DAY, "TR7-A", 1, [H + x for x in m]),
    ]


def test_migration_0006_splits_day_rows_and_downgrade_merges_them(settings, tools) -> None:
    _ingest(settings, tools)
    hourly = _rows(settings)
    tools.migrate_to(settings, "0005_catalogs_retroactive")
    with settings.engine.connect() as c:
        cols = {x["name"] for x in sa.inspect(c).get_columns("capacities")}
        days = {r.day: r.offsets for r in c.execute(sa.text("SELECT day, offsets FROM capacities"))}
    assert "hour" not in cols
    # One row a day, as revisions before 0006 kept them: every offset of the day, ascending.
    assert {d - T0 + T0 % DAY: o for d, o in days.items()} == {
        0: ",".join(str(h * H + 1200 * k) for h in (22, 23) for k in range(3)),
        DAY: ",".join(str(h * H + 1200 * k) for h in (0, 1) for k in range(3)),
    }
    tools.migrate_to(settings, "head")
    assert _rows(settings) == hourly
    # Ingest goes on appending to the migrated rows (same key, same primary key name on PostgreSQL).
    agent = tools.Agent("b")
    tools.enrol(settings, "acme", agent, T0 - DAY)
    line = agent.beat(T0 + 23 * 60, {"TR7-A": "running"}, capacity=PRO)
    assert ingest_lines(settings.engine, [line], now=T0 + DAY)[0]["status"] == "accepted"
    assert _rows(settings)[0] == (0, "TR7-A", 22, [22 * H, 22 * H + 1200, 22 * H + 23 * 60, 22 * H + 2400])
    if settings.engine.dialect.name == "postgresql":
        with settings.engine.connect() as c:
            assert sa.inspect(c).get_pk_constraint("capacities")["name"] == "capacities_pkey"


def test_split_by_hour_orders_and_dedups_what_old_ingest_appended() -> None:
    import importlib.util
    from pathlib import Path
    from types import SimpleNamespace

    import collector

    path = Path(collector.__file__).parent / "migrations" / "versions" / "0006_capacities_hourly.py"
    spec = importlib.util.spec_from_file_location("m0006", path)
    assert spec is not None and spec.loader is not None
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    key = {"provider": "acme", "day": T0 - T0 % DAY, "instance": "TR7-A", "cap": "[]"}
    # Two batches appended: the second overlaps the first (a same-second beat of another agent).
    rows = [SimpleNamespace(**key, offsets="60,3599,3600,7300,3600,120,60")]
    assert [(r["hour"], r["offsets"]) for r in m.split_by_hour(iter(rows))] == [
        (0, "60,120,3599"), (1, "3600"), (2, "7300"),
    ]
    merged = m.merge_hours(iter([SimpleNamespace(**key, offsets=o) for o in ("3600", "60,120")]))
    assert [r["offsets"] for r in merged] == ["60,120,3600"]


def test_a_day_row_whose_bits_are_all_set_already_is_not_rewritten(settings, tools) -> None:
    """An agent polling every minute sets its hour's bit 60 times: only the first changes the
    row. PostgreSQL keeps the row's version (xmin) through the others, so no new row version and
    no WAL is written for them (on SQLite the rows' values are checked). The bits are as before."""
    agent = tools.Agent("a")
    tools.enrol(settings, "acme", agent, T0 - DAY)
    beats = [agent.beat(T0 + k * 60, {"TR7-A": "running", "TR7-B": "stopped"}) for k in range(4)]
    pg = settings.engine.dialect.name == "postgresql"

    def version() -> list:
        with settings.engine.connect() as c:
            if pg:
                return c.exec_driver_sql("SELECT instance, xmin::text FROM days ORDER BY instance").all()
            return c.exec_driver_sql("SELECT instance, active, seen FROM days ORDER BY instance").all()

    assert ingest_lines(settings.engine, beats[:1], now=T0 + DAY)[0]["status"] == "accepted"
    first = version()
    for beat in beats[1:]:  # same hour, same states: nothing to add to the bits
        assert ingest_lines(settings.engine, [beat], now=T0 + DAY)[0]["status"] == "accepted"
        assert version() == first
    with settings.engine.connect() as c:
        days = s.days.c
        rows = c.execute(sa.select(days.instance, days.active, days.seen).order_by(days.instance)).all()
    bit = 1 << 22  # hour 22 of the day
    assert [tuple(r) for r in rows] == [("TR7-A", bit, bit), ("TR7-B", 0, bit)]
    later = agent.beat(T0 + H, {"TR7-A": "running", "TR7-B": "running"})  # the next hour: changed
    assert ingest_lines(settings.engine, [later], now=T0 + DAY)[0]["status"] == "accepted"
    assert version() != first
