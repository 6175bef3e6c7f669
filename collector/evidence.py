"""What billing reads from the store: chain rows, anchors, and Activity rebuilt from the aggregates.

Quarantine (forks, breaks) is decided over the whole month on the small `leaves` columns; the
(instance, hour) cells a quarantined leaf touched are then rebuilt from the JWS of the other
leaves of those hours only, so the aggregates never have to be rewritten.
"""

import json
from collections import defaultdict
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from billing.activity import Activity, CapacityKey, capacity_key, stored_bundles
from collector import chainsql
from collector import schema as s
from protocol.chain import Anchor, ChainAnalysis, LinkRow, analyze_links, anchor_map
from protocol.heartbeat import parse_unverified
from protocol.timefmt import month_bounds, previous_month

HOUR = 3600
DAY = 86400
_L = s.leaves.c


def _tuples(conn: Connection, q: sa.Select[Any]) -> list[tuple[Any, ...]]:
    """The driver's own row tuples: these columns (strings, integers) need no SQLAlchemy processing,
    and building its Row objects for a month's 60,000 rows costs about as much as reading them."""
    result = conn.execute(q)
    try:
        return cast(list[tuple[Any, ...]], result.cursor.fetchall())
    finally:
        result.close()


def _stream(conn: Connection, q: sa.Select[Any]) -> Iterator[tuple[Any, ...]]:
    """The driver's row tuples one at a time: a month's 60,000 day rows are never all alive at once
    (fewer allocations outstanding, so no cyclic-GC pass is triggered by them)."""
    result = conn.execute(q)
    try:
        # In chunks: psycopg's per-row __next__ cost more than PostgreSQL's own work (a month's
        # day rows: 75 of 115 ms); fetchmany converts a chunk in one call on both drivers.
        while chunk := result.cursor.fetchmany(_CHUNK):
            yield from chunk
    finally:
        result.close()


_CHUNK = 4096


def chain_rows(conn: Connection, provider: str, month: str, size: int | None = None) -> list[LinkRow]:
    """The month's leaves as the chain rules read them: (kid, seq, prev, time, digest) tuples."""
    q = sa.select(_L.kid, _L.seq, _L.prev, _L.time, _L.digest)
    q = q.where(_L.provider == provider, _L.month == month)
    if size is not None:
        q = q.where(_L.idx < size)
    return cast(list[LinkRow], _tuples(conn, q.order_by(_L.idx)))


def anchor_rows(conn: Connection, provider: str, month: str, latest: bool = False) -> list[Any]:
    """Each key's last accepted heartbeat of the month before: its highest seq, every copy of it
    when that seq was forked (protocol.chain.anchor_map: rule 4 then checks no link to it; the
    first logged copy alone made the month's first heartbeat a break, its hour unbilled).

    For a closed month, accepted by its close: among the month before's first `closes.anchor_size`
    leaves. A heartbeat of the month before that arrives later is that month's late data; it does
    not move the anchors the frozen documents were computed from (docs/protocol-decisions.md).
    ``latest``: over all the month before's leaves, closed or not (the boundary alerts)."""
    prev = previous_month(month)
    scope = [_L.provider == provider, _L.month == prev]
    bound = None if latest else conn.execute(
        sa.select(s.closes.c.anchor_size).where(s.closes.c.provider == provider, s.closes.c.month == month)
    ).scalar()
    if bound is not None:
        scope.append(_L.idx < bound)
    top = sa.select(_L.kid, sa.func.max(_L.seq).label("seq")).where(*scope).group_by(_L.kid).subquery()
    q = (
        sa.select(_L.kid, _L.seq, _L.prev, _L.time, _L.interval, _L.digest, _L.jws, _L.idx)
        .join(top, sa.and_(_L.kid == top.c.kid, _L.seq == top.c.seq))
        .where(*scope)
        .order_by(_L.idx)
    )
    return sorted(conn.execute(q), key=lambda r: (r.kid, r.idx))


def anchors(conn: Connection, provider: str, month: str, latest: bool = False) -> dict[str, Anchor]:
    return anchor_map(anchor_rows(conn, provider, month, latest))


def chain_analysis(conn: Connection, provider: str, month: str, size: int | None = None) -> ChainAnalysis:
    """The chain rules over the month's leaves, run by the database (collector/chainsql.py)."""
    return chainsql.chain_analysis(conn, provider, month, anchors(conn, provider, month), size)


def chain_analysis_rows(
    conn: Connection, provider: str, month: str, size: int | None = None
) -> ChainAnalysis:
    """The reference: every leaf's chain columns read and protocol.chain.analyze_links run over them."""
    return analyze_links(chain_rows(conn, provider, month, size), anchors(conn, provider, month))


@dataclass
class Rebuilt:
    """Cells rebuilt after quarantine: instance -> hours, and their declared capacities."""

    hours: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))
    declared: dict[str, dict[CapacityKey, list[int]]] = field(default_factory=dict)


class _Declared(Mapping[str, Mapping[CapacityKey, Sequence[int]]]):
    """instance -> capacity -> observation times, read from `capacities` on first use per instance."""

    def __init__(
        self, conn: Connection, provider: str, month: str, rebuilt: "Rebuilt", bundles: Sequence[str]
    ) -> None:
        self._conn, self._provider = conn, provider
        self._m0, self._m1 = month_bounds(month)
        self._cache: dict[str, dict[CapacityKey, list[int]]] = {}
        self._rebuilt = rebuilt
        self._bundle = stored_bundles(bundles)  # a long declared bundle is stored as its stand-in

    def __getitem__(self, inst: str) -> Mapping[CapacityKey, Sequence[int]]:
        if inst not in self._cache:
            c = s.capacities.c
            out: dict[CapacityKey, list[int]] = defaultdict(list)
            skip_hours = self._rebuilt.hours.get(inst, set())
            for r in self._conn.execute(
                sa.select(c.day, c.cap, c.offsets).where(
                    c.provider == self._provider, c.instance == inst, c.day >= self._m0, c.day < self._m1
                )
            ):
                bundle, bandwidth, vservices = json.loads(r.cap)
                key: CapacityKey = (bundle if bundle is None else self._bundle(bundle), bandwidth, vservices)
                for off in {int(x) for x in r.offsets.split(",")}:
                    t = r.day + off
                    if t - t % HOUR not in skip_hours:
                        out[key].append(t)
            for key, times in self._rebuilt.declared.get(inst, {}).items():
                out[key].extend(times)
            self._cache[inst] = {k: sorted(v) for k, v in out.items()}
        return self._cache[inst]

    def __iter__(self) -> Iterator[str]:
        c = s.capacities.c
        q = (
            sa.select(c.instance)
            .distinct()
            .where(c.provider == self._provider, c.day >= self._m0, c.day < self._m1)
        )
        return iter(sorted(self._conn.execute(q).scalars()))

    def __len__(self) -> int:
        return sum(1 for _ in self)


def month_bits(conn: Connection, provider: str, month: str) -> tuple[dict[str, int], dict[str, int]]:
    """Per instance, the month's active and seen hours straight from the day rows (every vm ORed):
    one int per month, bit i = the hour m0 + i*HOUR (a day's 24-bit map shifted in)."""
    m0, m1 = month_bounds(month)
    active: dict[str, int] = defaultdict(int)
    seen: dict[str, int] = defaultdict(int)
    d = s.days.c
    q = sa.select((d.day - m0) // HOUR, d.instance, d.active, d.seen).where(
        d.provider == provider, d.day >= m0, d.day < m1
    )
    for k, inst, a_bits, s_bits in _stream(conn, q):
        if a_bits:
            active[inst] |= a_bits << k
        seen[inst] |= s_bits << k
    return active, seen


def billed_bits(
    conn: Connection, provider: str, month: str, quarantined: Collection[str]
) -> tuple[dict[str, int], dict[str, int]]:
    """month_bits as billing counts them: without the hours only quarantined leaves gave."""
    active, seen = month_bits(conn, provider, month)
    without_quarantined(conn, provider, month, quarantined, active, seen)
    return active, seen


def activity(
    conn: Connection, provider: str, month: str, quarantined: set[str], bundles: Sequence[str],
    bits: tuple[dict[str, int], dict[str, int]] | None = None,
) -> Activity:
    """Activity of the month from the day bitmaps (``bits``: month_bits, if read already; this
    changes them), with quarantined leaves' cells rebuilt; ``bundles``: the catalog's, which
    the declared bundles stored as stand-ins are read back as (billing.activity.key_text)."""
    m0 = month_bounds(month)[0]
    active, seen = month_bits(conn, provider, month) if bits is None else bits
    rebuilt = _rebuild(conn, provider, month, quarantined, active, seen) if quarantined else Rebuilt()
    act = Activity(active_bits={k: v for k, v in active.items() if v},
                   seen_bits={k: v for k, v in seen.items() if v}, bits_base=m0)
    act.declared = _Declared(conn, provider, month, rebuilt, bundles)
    return act


def without_quarantined(
    conn: Connection, provider: str, month: str, quarantined: Collection[str],
    active: dict[str, int], seen: dict[str, int],
) -> None:
    """Month bitsets (instance -> int, bit i = the hour m0 + i * HOUR, straight from the day
    rows) as billing counts them: the cells quarantined leaves touched are rebuilt from the other
    leaves of those hours, in place, for the instances in ``seen`` only. The read API and the
    pages read the aggregates too, and counted the hours of a fork's copies (billing-v1.md §1)."""
    if not quarantined:
        return
    a, s_ = defaultdict(int, active), defaultdict(int, seen)
    _rebuild(conn, provider, month, set(quarantined), a, s_)
    for inst in list(seen):
        active[inst], seen[inst] = a[inst], s_[inst]


def _rebuild(
    conn: Connection,
    provider: str,
    month: str,
    quarantined: set[str],
    active: dict[str, int],
    seen: dict[str, int],
) -> Rebuilt:
    """Recompute the cells quarantined leaves touched from the remaining leaves of those hours."""
    m0 = month_bounds(month)[0]
    bad = [
        parse_unverified(t)
        for t in conn.execute(
            sa.select(_L.jws).where(
                _L.provider == provider, _L.month == month, _L.digest.in_(sorted(quarantined))
            )
        ).scalars()
    ]
    cells: dict[int, set[str]] = defaultdict(set)  # hour -> instances to rebuild
    for hb in bad:
        for o in hb.observations:
            cells[hb.time - hb.time % HOUR].add(o["instance"])
    out = Rebuilt()
    for hour, insts in cells.items():
        bit = 1 << (hour - m0) // HOUR
        for inst in insts:
            active[inst] &= ~bit
            seen[inst] &= ~bit
            out.hours[inst].add(hour)
        rows = conn.execute(
            sa.select(_L.jws, _L.digest).where(
                _L.provider == provider, _L.month == month, _L.time >= hour, _L.time < hour + HOUR
            )
        ).all()
        for r in rows:
            if r.digest in quarantined:
                continue
            hb = parse_unverified(r.jws)
            for o in hb.observations:
                inst = o["instance"]
                if inst not in insts:
                    continue
                seen[inst] |= bit
                if o["state"] == "running":
                    active[inst] |= bit
                if o["capacity"] is not None:
                    out.declared.setdefault(inst, {}).setdefault(capacity_key(o["capacity"]), []).append(
                        hb.time
                    )
    return out
