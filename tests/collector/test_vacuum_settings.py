"""PostgreSQL autovacuums the tables that grow by inserts after every 10,000 rows (migration 0014):
billing's index-only scans of a month then find its pages marked all-visible."""

import sqlalchemy as sa

from collector import schema as s

TABLES = ("leaves", "days", "capacities")
WANT = {f"{k}={v}" for k, v in s.VACUUM_AFTER_INSERTS.items()}


def _options(settings) -> dict[str, set[str]]:
    with settings.engine.connect() as c:
        if c.dialect.name != "postgresql":  # SQLite has no autovacuum: its tables are only there
            return {t: set() for t in TABLES if sa.inspect(c).has_table(t)}
        rows = c.exec_driver_sql(
            "SELECT relname, coalesce(reloptions, '{}') FROM pg_class WHERE relname IN ('leaves', 'days', "
            "'capacities') AND relkind = 'r'"
        ).all()
    return {name: set(opts) for name, opts in rows}


def test_new_and_migrated_databases_vacuum_after_inserts(settings, tools) -> None:
    want = WANT if settings.engine.dialect.name == "postgresql" else set()
    assert _options(settings) == {t: want for t in TABLES}  # created by revision 0001 with them
    tools.migrate_to(settings, "0013_leaves_jws_bytea")  # the downgrade takes them off
    assert _options(settings) == {t: set() for t in TABLES}
    tools.migrate_to(settings, "head")  # and 0014 puts them on an existing database
    assert _options(settings) == {t: want for t in TABLES}
