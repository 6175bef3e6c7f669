"""Results the pages and the read API share, cached per provider and month (stale while revalidating).

A month's bill, its agents' health and its alerts take seconds at 2,000 instances and agents ship
every minute: a request gets the last result at once while one background thread recomputes
it. Here, not in collector/web, because the read API (collector/readapi.py) serves from it too.
"""

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from collector import alerts, db, fairbound
from collector import schema as s
from collector.accounts import store as acc_store
from collector.singleflight import MISSING, Flights

T = TypeVar("T")
_cache: "OrderedDict[tuple[Any, ...], Any]" = OrderedDict()
_lock = threading.Lock()


def state_key(conn: Connection, provider: str) -> tuple[Any, ...]:
    """Changes whenever a bill of the provider can: a leaf, a catalog, a close, a downgrade."""
    logs = conn.execute(
        sa.select(sa.func.coalesce(sa.func.sum(s.logs.c.size), 0), sa.func.count()).where(
            s.logs.c.provider == provider
        )
    ).one()
    cat = conn.execute(
        sa.select(sa.func.max(s.catalogs.c.id)).where(s.catalogs.c.provider == provider)
    ).scalar()
    closes = tuple(conn.execute(  # an amended closed month's adjustments change too
        sa.select(sa.func.count(), sa.func.max(s.closes.c.amended_at)).where(s.closes.c.provider == provider)
    ).one())
    agents = conn.execute(
        sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(s.agents.c.revoked_at), 0)).where(
            s.agents.c.provider == provider
        )
    ).one()
    periods = acc_store.periods(conn, provider)
    return (
        provider,
        tuple(agents),
        int(logs[0]),
        int(logs[1]),
        cat,
        closes,
        tuple(sorted((k, tuple(v)) for k, v in periods.items())),
    )


class _Entry:
    __slots__ = ("outdated", "state", "value")

    def __init__(self, state: tuple[Any, ...], value: Any) -> None:
        self.state, self.value = state, value
        self.outdated = False  # a request saw the store change since: a newer value is being made


_refreshing: set[tuple[Any, ...]] = set()
_flights = Flights()  # slots being computed for the first time


# Entries kept per kind (a slot's first member), the least recently used going first. A month's
# bill ("results", "unpriced") is megabytes at 2,000 instances: 64 of them. Hour counts ("hours")
# are a number per instance, and the vendor's page reads them for every provider: 256. Health,
# clones and boundary alerts are short lists, and the vendor's GET /metrics reads them for every
# provider on each scrape: with one bound of 64 for all kinds, 22 providers made each scrape push
# out its own entries and recompute every one of them in the request. Within a kind, a provider
# keeps at most PER_PROVIDER months: one tenant asking for many ?month= values pushes out its own
# oldest, not the other tenants' (collector/fairbound.py).
KEEP = 64
KEEP_KIND = {"hours": 256}
KEEP_SMALL = 2048
SMALL = frozenset({"health", "clones", "across_months", "licensing"})
PER_PROVIDER = 16


def _store(slot: tuple[Any, ...], state: tuple[Any, ...], value: Any) -> None:
    kind = slot[0]
    total = KEEP_SMALL if kind in SMALL else KEEP_KIND.get(kind, KEEP)
    with _lock:
        _cache[slot] = _Entry(state, value)
        _cache.move_to_end(slot)
        fairbound.trim(_cache, slot, peers=lambda k: k[0] == kind, owner=lambda k: k[1:3],
                       per_owner=total if kind in SMALL else PER_PROVIDER, total=total)


def _refresh(engine: Any, slot: tuple[Any, ...], extra: tuple[Any, ...], fn: Any) -> None:
    try:
        with db.read_conn(engine) as c:  # one snapshot: the state read is the state computed
            _store(slot, (*state_key(c, slot[2]), *extra), fn(c))
    finally:
        with _lock:
            _refreshing.discard(slot)


def cached(
    conn: Connection, slot: tuple[Any, ...], extra: tuple[Any, ...], fn: Callable[[Connection], T]
) -> T:
    """Stale-while-revalidate: agents ship every few minutes, so the store changes all the time and
    a month's bill takes seconds at 2,000 instances. A page gets the last result at once while one
    background thread per slot recomputes it; only the very first request of a slot waits."""
    state = (*state_key(conn, slot[2]), *extra)
    with _lock:
        entry = _cache.get(slot)
        if entry is not None:
            _cache.move_to_end(slot)
            if entry.state != state:
                entry.outdated = True
                if slot not in _refreshing:
                    _refreshing.add(slot)
                    args = (conn.engine, slot, extra, fn)
                    threading.Thread(target=_refresh, args=args, daemon=True).start()
            value: T = entry.value  # what ``fn`` made for this slot
            return value

    def stored() -> Any:
        with _lock:
            got = _cache.get(slot)
        return MISSING if got is None else got.value

    def make() -> T:
        made = fn(conn)
        _store(slot, state, made)
        return made

    # The slot's first computation: another request (or the start-up warm-up) may be making it
    first: T = _flights.once(slot, stored, make)
    return first


def outdated(slot: tuple[Any, ...]) -> bool:
    """Whether the slot's value is the previous computation's: a request saw the store change
    since, and a newer value is being made."""
    with _lock:
        entry = _cache.get(slot)
    return entry is not None and entry.outdated


def db_id(conn: Connection) -> str:
    # One process may hold several databases (tests do).
    return conn.engine.url.render_as_string(hide_password=True)


def health(conn: Connection, provider: str, month: str, now: int) -> list[dict[str, Any]]:
    # Silence depends on the clock: the answer is recomputed at least once a minute.
    return cached(
        conn,
        ("health", db_id(conn), provider, month),
        (now // 60,),
        lambda c: alerts.agent_health(c, provider, month, now),
    )


def clones(conn: Connection, provider: str, month: str) -> list[dict[str, Any]]:
    return cached(
        conn, ("clones", db_id(conn), provider, month), (), lambda c: alerts.clones(c, provider, month)
    )


def across_months(conn: Connection, provider: str, month: str) -> list[dict[str, Any]]:
    return cached(
        conn, ("across_months", db_id(conn), provider, month), (),
        lambda c: alerts.across_months(c, provider, month),
    )


def alerts_of(
    conn: Connection, provider: str, month: str, now: int, licensing: list[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """The month's alerts with the chain, boundary and clone pieces from this cache, as the read
    API's /alerts and GET /metrics give them: recomputed from every leaf of the month on each
    request, they took 2.7 s at 1.7 million heartbeats. The bill's own alerts are exact (from
    accounting.own_result's cache, keyed by what the bill depends on) unless ``licensing`` gives
    them: the overview passes this cache's (licensing below), whose staleness it shows."""
    return alerts.alerts(conn, provider, month, now, health=health(conn, provider, month, now),
                         boundary=across_months(conn, provider, month), copies=clones(conn, provider, month),
                         licensing=licensing)


def licensing(conn: Connection, provider: str, month: str) -> list[dict[str, Any]]:
    """The alerts of the month's bill (alerts.licensing_alerts) for the overview: the bill's usage
    decoded, or a whole unpriced one computed, on every request otherwise."""
    return cached(
        conn, ("licensing", db_id(conn), provider, month), (),
        lambda c: alerts.licensing_alerts(c, provider, month),
    )
