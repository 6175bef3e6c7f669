"""What ingest writes beside the log: the hour cells of observations, their aggregation per
(day, instance, vm) and (day, instance, capacity, hour), per-key spool lag, and the statements
that upsert them (one per dialect, straight to the driver)."""

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from functools import cache
from typing import Any

import msgspec
import psycopg
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from billing.activity import key_text
from collector import schema as s
from protocol.heartbeat import Heartbeat
from protocol.sharedpayload import Capacity, Observations


def cap_key(cap: dict[str, Any]) -> str:
    """Stored form of a declared capacity: JSON [bundle, bandwidth_mbps, vservices], null = absent."""
    return json.dumps([cap.get("bundle"), cap.get("bandwidth_mbps"), cap.get("vservices")])


DAY = 86400


# What the hour aggregates need of one observation: instance, vm, running, capacity key or None.
Cell = tuple[str, str, bool, str | None]


class CapacityKeys(dict[Capacity, str]):
    """One capacity is declared thousands of times: encode it once. Keyed by the decoded Capacity
    (frozen, hashable), so the order its members were written in does not split it."""

    def __missing__(self, cap: Capacity) -> str:
        members = {n: v for n in Capacity.__struct_fields__ if (v := getattr(cap, n)) is not msgspec.UNSET}
        if isinstance(bundle := members.get("bundle"), str):
            members["bundle"] = key_text(bundle)
        key = self[cap] = cap_key(members)
        return key


def cells_of_observations(obs: Observations, keys: CapacityKeys) -> tuple[Cell, ...]:
    """What the hour aggregates need of each observation of a shared Observations."""
    return tuple([
        (o.instance, key_text(o.vm), o.state == "running", None if (cap := o.capacity) is None else keys[cap])
        for o in obs.items
    ])


def aggregate_cells(
    items: Iterable[tuple[int, Sequence[Cell]]],
) -> tuple[dict[tuple[int, str, str], list[int]], dict[tuple[int, str, str, int], list[list[int]]]]:
    """(day, instance, vm) -> [active bits, seen bits]; (day, instance, capacity, hour) -> the lists
    of time offsets it was declared at (one per group below, shared by every instance of the group).

    Items that share one cells object (heartbeats with the same observations text) in one hour
    of one day are ORed once: only their time offsets are kept apart."""
    groups: dict[tuple[int, int, int], tuple[Sequence[Cell], list[int]]] = {}
    for t, cells in items:
        day = t - t % DAY
        off = t - day
        # id() is safe: each cells object is held by its group while groups is alive
        g = groups.get((day, off // 3600, id(cells)))
        if g is None:
            groups[(day, off // 3600, id(cells))] = (cells, [off])
        else:
            g[1].append(off)
    bits: dict[tuple[int, str, str], list[int]] = {}
    caps: dict[tuple[int, str, str, int], list[list[int]]] = defaultdict(list)
    get_bits = bits.get
    for (day, hour, _), (cells, offs) in groups.items():
        bit = 1 << hour
        for inst, vm, running, key in cells:
            k = (day, inst, vm)
            b = get_bits(k)
            if b is None:
                b = bits[k] = [0, 0]
            b[1] |= bit
            if running:
                b[0] |= bit
            if key is not None:
                caps[(day, inst, key, hour)].append(offs)
    return bits, caps


def offsets_text(lists: Sequence[list[int]]) -> str:
    """The stored `capacities.offsets` of some offset lists: distinct, ascending, comma-separated."""
    return ",".join(map(str, sorted(set().union(*lists))))


# Straight to the driver's executemany, with statements written once per dialect: SQLAlchemy's
# per-row parameter processing cost as much as the database's own work for these rows (none of
# the columns needs a type conversion). Both dialects share the SQL; only the marks differ.
_UPSERTS = {
    "leaves": ("INSERT INTO {t} ({cols}) {source}", (
        "provider", "month", "idx", "digest", "leaf_hash", "kid", "seq", "prev", "time", "interval",
        "received_at", "jws")),
    # A row whose bits already hold the new ones is left as it is (the WHERE): an agent polling
    # every minute sets its hour's bit 60 times, and each update wrote a new row version and its
    # WAL for nothing (a one-line request: 50 such rows, ~200 us of PostgreSQL's CPU).
    "days": ("INSERT INTO {t} ({cols}) {source} ON CONFLICT ({key}) DO UPDATE SET "
             "{active} = {t}.{active} | excluded.{active}, {seen} = {t}.{seen} | excluded.{seen} "
             "WHERE ({t}.{active} | excluded.{active}) <> {t}.{active} "
             "OR ({t}.{seen} | excluded.{seen}) <> {t}.{seen}",
             ("provider", "day", "instance", "vm", "active", "seen")),
    "capacities": ("INSERT INTO {t} ({cols}) {source} ON CONFLICT ({key}) DO UPDATE SET "
                   "{offsets} = {t}.{offsets} || ',' || excluded.{offsets}",
                   ("provider", "day", "instance", "cap", "hour", "offsets")),
    "spool_lag": ("INSERT INTO {t} ({cols}) {source} ON CONFLICT ({key}) DO UPDATE SET "
                  "{beats} = {t}.{beats} + excluded.{beats}, {lag_sum} = {t}.{lag_sum} + excluded.{lag_sum}, "
                  "{lag_max} = CASE WHEN excluded.{lag_max} > {t}.{lag_max} THEN excluded.{lag_max} "
                  "ELSE {t}.{lag_max} END",
                  ("provider", "month", "kid", "beats", "lag_sum", "lag_max")),
    "rejections": ("INSERT INTO {t} ({cols}) {source} ON CONFLICT ({key}) DO UPDATE SET "
                   "{lines} = {t}.{lines} + excluded.{lines}, {last_at} = excluded.{last_at}",
                   ("provider", "rule", "lines", "last_at")),
}
# On PostgreSQL the aggregates go as ONE statement over column arrays, not one per row: measured
# on 2,000-row batches of `days`, 9 -> 6 us of the server's CPU and 7 -> 3 us of ours a row; a
# batch of interleaved agents upserts ~8 such rows a heartbeat. Their keys are distinct within a
# statement (ON CONFLICT requires it) and the rows keep their sorted order (the lock order).
# Not `leaves`: arrays of 10 kB texts cost more than a row each (client 15 -> 200 us a row).
# The arrays go in binary (%b): in text, psycopg quotes every element of a text[] through a
# regex in Python, ~3 us an element (a capacity's key and offsets hold commas), 0.2 in binary:
# 12.6 -> 4.4 us a heartbeat of our CPU for the aggregates.
_ARRAY_TYPES = {
    "days": ("text", "bigint", "text", "text", "bigint", "bigint"),
    "capacities": ("text", "bigint", "text", "text", "smallint", "text"),
}


@cache
def _sql_for(table: str, dialect: str, paramstyle: str, quote: Any) -> str:
    template, cols = _UPSERTS[table]
    q = {c: quote(c) for c in cols}
    key = ", ".join(quote(c) for c in (c.name for c in s.metadata.tables[table].primary_key))
    names = ", ".join(q.values())
    if dialect == "postgresql" and table in _ARRAY_TYPES:
        arrays = ", ".join(f"%b::{t}[]" for t in _ARRAY_TYPES[table])
        source = f"SELECT {names} FROM unnest({arrays}) WITH ORDINALITY AS u({names}, n) ORDER BY n"
    else:
        mark = "?" if paramstyle == "qmark" else "%s"
        source = f"VALUES ({', '.join([mark] * len(cols))})"
    return template.format(t=quote(table), cols=names, source=source, key=key, **q)


def sql(conn: Connection, table: str) -> str:
    d = conn.dialect
    return _sql_for(table, d.name, d.paramstyle, d.identifier_preparer.quote)


def upsert(conn: Connection, table: str, rows: list[tuple[Any, ...]]) -> None:
    if conn.dialect.name == "postgresql" and table in _ARRAY_TYPES:
        conn.exec_driver_sql(sql(conn, table), tuple(map(list, zip(*rows, strict=True))))
    else:
        conn.exec_driver_sql(sql(conn, table), rows)


# Plain appends by COPY on PostgreSQL (binary: no text to escape or parse), not an INSERT a row:
# psycopg's executemany cost ~25 us of our CPU a 10 kB leaf (a Bind and an Execute each, their
# parameters dumped in Python), COPY ~9; the server's ~31 us a row ~28 (its TOAST compression,
# the rest; measured in process, 24,000 heartbeats of bench/bench_ingest.py). The JWS goes as
# its 1.6 kB LZ4 frame since migration 0013 (collector/jwsstore.py): the server's COPY ~21 -> ~13.
_COPY_TYPES = {
    "leaves": (
        "text", "text", "int8", "text", "bytea", "text", "int8", "text", "int8", "int4", "int8", "bytea",
    ),
}


def append_rows(conn: Connection, table: str, rows: list[tuple[Any, ...]]) -> None:
    """Insert rows that must all be new (a unique key already taken raises IntegrityError, as
    the INSERT did: write_tx then redoes the transaction)."""
    if conn.dialect.name != "postgresql" or table not in _COPY_TYPES:
        conn.exec_driver_sql(sql(conn, table), rows)
        return
    quote = conn.dialect.identifier_preparer.quote
    cols = ", ".join(map(quote, _UPSERTS[table][1]))
    statement = f"COPY {quote(table)} ({cols}) FROM STDIN (FORMAT BINARY)"
    # SQLAlchemy types a pooled connection's driver connection as optional: a live one has it
    cur = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        with cur.copy(statement) as copy:
            copy.set_types(_COPY_TYPES[table])
            for row in rows:
                copy.write_row(row)
    except psycopg.IntegrityError as exc:  # the driver's own error: converted here, at the boundary
        raise IntegrityError(statement, None, exc) from exc
    finally:
        cur.close()


def upsert_aggregates(
    conn: Connection, provider: str, items: Iterable[tuple[int, Sequence[Cell]]]
) -> None:
    """OR the hours of (time, cells) items into `days`, add their capacity offsets to `capacities`."""
    bits, caps = aggregate_cells(items)
    if bits:
        upsert(conn, "days", [(provider, d, i, v, a, n) for (d, i, v), (a, n) in sorted(bits.items())])
    if caps:
        # The instances of one group share its offset lists: their text is made once, not per row
        # (50 observations a heartbeat made it ~3 us a heartbeat).
        texts: dict[tuple[int, ...], str] = {}
        rows = []
        for (d, i, c, h), lists in sorted(caps.items()):
            ids = tuple(map(id, lists))  # safe: caps holds every list while texts is alive
            text = texts.get(ids)
            if text is None:
                text = texts[ids] = offsets_text(lists)
            rows.append((provider, d, i, c, h, text))
        upsert(conn, "capacities", rows)


def spool_lag_rows(provider: str, month: str, new: Sequence[Heartbeat], now: int) -> list[tuple[Any, ...]]:
    """`spool_lag` rows of heartbeats appended at ``now``: per key, their count, lag sum and max."""
    per: dict[str, list[int]] = {}
    for hb in new:
        lag = now - hb.time
        p = per.get(hb.kid)
        if p is None:
            per[hb.kid] = [1, lag, lag]
        else:
            p[0] += 1
            p[1] += lag
            p[2] = max(p[2], lag)
    return [(provider, month, kid, *p) for kid, p in sorted(per.items())]
