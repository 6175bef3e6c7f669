"""Verified, idempotent ingest (heartbeat-v1.md §4): per-line outcomes, one durable transaction.

The log append (leaf index per provider-month), the dedup key (unique kid, month, seq and digest)
and the hour aggregates are written in ONE transaction that first locks the log's counter row, so
several collector processes on one database never hand out a leaf index twice; a unique-key race
with another process rolls the whole batch back and redoes it, when the line is then a duplicate.
"""

import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy.engine import Connection, Engine

from collector import highwater, jwsstore
from collector import schema as s
from collector.aggregates import (
    DAY,
    CapacityKeys,
    Cell,
    append_rows,
    cells_of_observations,
    spool_lag_rows,
    upsert,
    upsert_aggregates,
)
from collector.db import read_conn, write_tx
from collector.logged import keys_logged
from collector.rejections import count_rejections, rejected
from collector.tiles import write_tiles
from collector.tlog import lock_log_state
from protocol.errors import ProtocolError
from protocol.heartbeat import Heartbeat, check_key_window, check_signature, header_kid, parse_shared
from protocol.keys import load_public_key_b64
from protocol.merkle import leaf_hash
from protocol.sharedpayload import Observations
from protocol.timefmt import month_of

log = logging.getLogger(__name__)
MAX_FUTURE = 300  # seconds a heartbeat may be ahead of the collector's clock at receipt
REVOKED = "time is after the key's revocation"  # as protocol.heartbeat.check_key_window says


def _pruned(month: str) -> ProtocolError:
    """A new line of a month whose evidence `tr7-collector prune` dropped (docs/collector.md,
    "Pruning old months"): its log is sealed, since the month can no longer be recomputed."""
    return ProtocolError("month.pruned", f"{month} was pruned by the collector: it takes no more heartbeats")


@dataclass
class _Agent:
    provider: str
    key: Ed25519PublicKey
    enrolled_at: int
    revoked_at: int | None


@lru_cache(maxsize=4096)
def _public_key(text: str) -> Ed25519PublicKey:
    """load_public_key_b64, memoised: its check that no one else can sign for the key is a scalar
    multiplication, ~44 us, paid once per batch for each of its keys, so as much as the signature
    check itself for an agent that posts its heartbeats one at a time. A key's text alone decides
    it (a refused one raises, and is not cached); enrolment and revocation are read every batch."""
    return load_public_key_b64(text)


# The statements every batch runs, built once: building a Core statement and its cache key again
# for each batch was ~15% of a one-line request's CPU (cProfile), where the work is per request.
_KIDS: sa.BindParameter[str] = sa.bindparam("kids", expanding=True)
_AGENTS = sa.select(s.agents).where(s.agents.c.kid.in_(_KIDS))
_REVOKED = sa.select(s.agents.c.kid, s.agents.c.revoked_at).where(s.agents.c.kid.in_(_KIDS))
_REVOKED_LOCKED = _REVOKED.with_for_update(read=True)
_SIZES = sa.select(s.logs.c.provider, s.logs.c.month, s.logs.c.size).where(
    s.logs.c.provider.in_(sa.bindparam("providers", expanding=True))
)
_GROW = (
    s.logs.update()
    .where(s.logs.c.provider == sa.bindparam("p"), s.logs.c.month == sa.bindparam("m"))
    .values(size=sa.bindparam("size"), tile_peaks=sa.bindparam("peaks"))
)


def _load_agents(conn: Connection, kids: set[str]) -> dict[str, _Agent]:
    out: dict[str, _Agent] = {}
    if kids:
        for r in conn.execute(_AGENTS, {"kids": sorted(kids)}):
            try:
                key = _public_key(r.public_key)
            except ProtocolError as exc:
                # A weak key enrolled before enrolment refused them: anyone can sign for it, so
                # its lines are rejected as from an unknown key (kid.unknown), never a 500.
                log.error("event=weak_agent_key kid=%s provider=%s reason=%r: revoke it and re-enrol",
                          r.kid, r.provider, exc.detail)
                continue
            out[r.kid] = _Agent(r.provider, key, r.enrolled_at, r.revoked_at)
    return out


@lru_cache(maxsize=256)
def _month_of_day(day: int) -> str:
    return month_of(day)


@dataclass(frozen=True, slots=True)
class _Leaf:
    """What the log row of a verified heartbeat needs beyond the heartbeat: made before the write
    transaction, since only one writer at a time holds it (on SQLite, across processes): hashing
    and compressing ~10 kB there kept the other worker waiting ~9 us a heartbeat."""

    cells: Sequence[Cell]
    leaf_hash: bytes
    stored: bytes  # jwsstore.pack of the token


def _leaf(token: str, cells: Sequence[Cell]) -> _Leaf:
    raw = token.encode("ascii")
    return _Leaf(cells, leaf_hash(raw), jwsstore.pack(token, raw))


def _append(
    conn: Connection, provider: str, month: str, cands: list[Heartbeat], leaves: Mapping[str, _Leaf],
    now: int, seen: int | None = None,
) -> tuple[set[str], int]:
    """Append the not-yet-logged heartbeats of one log; return the digests appended and its size.

    ``seen``: the log's size in the snapshot that found none of ``cands`` logged. A log
    only grows, and a heartbeat can only be in the log of its key's provider and its month, so
    if the size is still that, none of them is in it now either and they are not looked up again
    (a retried transaction passes None: it looks)."""
    size, partial, pruned_at = lock_log_state(conn, provider, month)
    if size == seen and pruned_at is None:
        new = cands
    else:
        known = keys_logged(conn, [(hb.kid, month, hb.seq) for hb in cands])
        new = [hb for hb in cands if (hb.kid, month, hb.seq, hb.digest) not in known]
    if pruned_at is not None:  # pruned since this batch's read: what is logged is a duplicate
        raise _PrunedLog({hb.digest for hb in new})
    if not new:
        return set(), size
    made = [leaves[hb.digest] for hb in new]
    hashes = [m.leaf_hash for m in made]
    append_rows(
        conn,
        "leaves",
        [
            (provider, month, size + i, hb.digest, m.leaf_hash, hb.kid, hb.seq, hb.prev, hb.time,
             hb.interval, now, m.stored)
            for i, (hb, m) in enumerate(zip(new, made, strict=True))
        ],
    )
    partial = write_tiles(conn, provider, month, size, hashes, partial)
    conn.execute(_GROW, {"p": provider, "m": month, "size": size + len(new), "peaks": partial})
    upsert_aggregates(conn, provider, [(hb.time, m.cells) for hb, m in zip(new, made, strict=True)])
    upsert(conn, "spool_lag", spool_lag_rows(provider, month, new, now))
    return {hb.digest for hb in new}, size + len(new)


def _revoked_since(conn: Connection, latest: Mapping[str, int]) -> dict[str, int]:
    """The keys' revocation times as of this write transaction (``latest``: kid -> the latest
    time of its lines in the batch, to skip keys whose lines all stand). The batch's keys were
    read before verification, in another transaction: a revocation committed in between let
    lines timed after it be logged, and the month's bundle then failed `tr7-audit verify` for
    good (key.window). PostgreSQL: FOR SHARE holds every key's row of the batch, revoked or not,
    against credentials.revoke_agent's FOR UPDATE until this transaction ends (locking only the
    rows already revoked left a key being revoked now unlocked: its revoke committed, then this
    batch its lines timed after it); SQLite: the write lock does."""
    if not latest:
        return {}
    q = _REVOKED_LOCKED if conn.dialect.name == "postgresql" else _REVOKED
    return {
        r.kid: int(r.revoked_at)
        for r in conn.execute(q, {"kids": sorted(latest)})
        if r.revoked_at is not None and int(r.revoked_at) < latest[r.kid]
    }


class _PrunedLog(Exception):
    """_append found its log pruned: the digests of its lines that are not logged."""

    def __init__(self, digests: set[str]) -> None:
        self.digests = digests


def _log_sizes(conn: Connection, providers: set[str]) -> dict[tuple[str, str], int]:
    """(provider, month) -> size of the providers' logs (one row a month each)."""
    if not providers:
        return {}
    rows = conn.execute(_SIZES, {"providers": sorted(providers)})
    return {(r.provider, r.month): int(r.size) for r in rows}


def ingest_lines(engine: Engine, lines: Sequence[str], now: int | None = None) -> list[dict[str, Any]]:
    """Verify and durably log a batch; one result per line, in order."""
    now = int(time.time()) if now is None else now
    results: list[dict[str, Any]] = [{} for _ in lines]
    # Every line is parsed first (not its signature): a line already logged is then found by its
    # key, month and seq (collector/logged.py) and answered without checking its signature again.
    parsed: dict[int, tuple[Heartbeat, Observations, bytes, str]] = {}
    named: dict[int, str] = {}  # the kid a header names on a line whose payload does not parse
    for n, line in enumerate(lines):
        try:
            hb, obs, sig = parse_shared(line)
        except ProtocolError as exc:
            results[n] = rejected(line, exc)
            with contextlib.suppress(ProtocolError):
                named[n] = header_kid(line)
            continue
        parsed[n] = (hb, obs, sig, _month_of_day(hb.time - hb.time % DAY))
    with read_conn(engine) as conn:
        agents = _load_agents(conn, {p[0].kid for p in parsed.values()} | set(named.values()))
        logged = keys_logged(conn, [(hb.kid, month, hb.seq) for hb, _, _, month in parsed.values()])
        seen = _log_sizes(conn, {a.provider for a in agents.values()})  # in the same snapshot
    keys = {kid: a.key for kid, a in agents.items()}
    cap_keys = CapacityKeys()
    ok: dict[int, tuple[str, Heartbeat]] = {}
    groups: dict[tuple[str, str], dict[str, Heartbeat]] = defaultdict(dict)
    leaves: dict[str, _Leaf] = {}
    # One cells tuple per distinct observations text in the batch (an agent's consecutive
    # heartbeats share one Observations): computed once, and ORed once per hour by the aggregate.
    cells_by_obs: dict[Observations, tuple[Cell, ...]] = {}
    cells_by_value: dict[tuple[Cell, ...], tuple[Cell, ...]] = {}
    for n, (hb, obs, sig, month) in parsed.items():
        if (hb.kid, month, hb.seq, hb.digest) in logged:
            # Byte-identical to a logged leaf, verified when it was accepted: an agent's retry.
            results[n] = {"seq": hb.seq, "status": "duplicate"}
            continue
        try:
            check_signature(hb, sig, keys)
            agent = agents[hb.kid]
            check_key_window(hb, agent.enrolled_at, agent.revoked_at)
            if hb.time > now + MAX_FUTURE:
                raise ProtocolError("time.future", f"time is more than {MAX_FUTURE} s ahead of the collector")
        except ProtocolError as exc:
            results[n] = rejected(lines[n], exc)
            continue
        results[n] = {"seq": hb.seq, "status": "pending"}
        # Only the cells are kept for the write, with the shared Observations (immutable; hb's
        # own observations list is empty).
        c = cells_by_obs.get(obs)
        if c is None:
            c = cells_of_observations(obs, cap_keys)
            # Equal cells (another text, e.g. only a host changed) share one tuple too.
            c = cells_by_obs[obs] = cells_by_value.setdefault(c, c)
        if hb.digest not in leaves:
            leaves[hb.digest] = _leaf(lines[n], c)
        ok[n] = (agent.provider, hb)
        groups[(agent.provider, month)].setdefault(hb.digest, hb)

    sizes: dict[str, int] = {}
    # digest -> why refused in the write transaction: its key revoked, or its month pruned, since
    # the checks above
    refused: dict[str, ProtocolError] = {}

    attempts = 0

    def tx(conn: Connection) -> set[str]:
        nonlocal attempts
        attempts += 1
        appended: set[str] = set()
        sizes.clear()  # a retried transaction starts again
        refused.clear()
        latest: dict[str, int] = {}
        for g in groups.values():
            for hb in g.values():
                latest[hb.kid] = max(latest.get(hb.kid, hb.time), hb.time)
        late = _revoked_since(conn, latest)
        for provider, month in sorted(groups):  # a fixed lock order: no deadlock between batches
            cands = []
            for hb in groups[(provider, month)].values():
                if hb.kid in late and hb.time > late[hb.kid]:
                    refused[hb.digest] = ProtocolError("key.window", REVOKED)
                else:
                    cands.append(hb)
            # A retry (after a unique-key race) looks the lines up whatever the sizes say.
            size = seen.get((provider, month), 0) if attempts == 1 else None
            try:
                got, sizes[f"{provider}/{month}"] = _append(conn, provider, month, cands, leaves, now, size)
            except _PrunedLog as exc:
                refused.update({d: _pruned(month) for d in exc.digests})
                continue
            appended |= got
        return appended

    appended = write_tx(engine, tx) if groups else set()
    highwater.note(engine, sizes)
    for n, (_provider, hb) in ok.items():
        if hb.digest in refused:
            results[n] = rejected(lines[n], refused[hb.digest])
        elif hb.digest in appended:
            appended.discard(hb.digest)  # a second copy in the same batch is a duplicate
            results[n]["status"] = "accepted"
        else:
            results[n]["status"] = "duplicate"
    count_rejections(engine, results, parsed, named, {k: a.provider for k, a in agents.items()}, now)
    return results
