"""Full recomputation of a month from heartbeats: month filter, chain quarantine, activity, compute.

Given compact JWS strings in bulk, parsing is spread over forked worker processes. Each worker
counts observations per (hour, state, instance) rather than collecting sets, so that the heartbeats the
chain analysis quarantines afterwards (over the whole month, §3) can be subtracted exactly; the
result is a function of the set of heartbeats, never of their order or of how they were split.
"""

import multiprocessing
import os
import threading
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from operator import itemgetter
from typing import Any, TypeGuard

from billing.activity import HOUR, Activity, capacity_key
from billing.catalog import Catalog, load_catalog
from billing.compute import BillingResult, compute
from protocol.chain import Anchor, analyze
from protocol.errors import ProtocolError
from protocol.heartbeat import Heartbeat, parse_unverified
from protocol.timefmt import month_bounds

PARALLEL_MIN = 20_000  # below this, forking costs more than it saves

Counts = dict[Any, dict[Any, int]]
# hour -> Counter of (state, instance): counted in C, the hot loop
Hours = dict[int, Counter[tuple[str, str]]]
Meta = tuple[int, str, int, str, int, int, str]  # (token index, kid, seq, prev, time, interval, digest)
_STATE_INSTANCE = itemgetter("state", "instance")


def count_heartbeat(hb: Heartbeat, hours: Hours, decl: dict[str, Counts], only: Collection[str],
                    delta: int) -> None:
    """Count one heartbeat's observations (delta 1) or take them back (-1), as billing.Activity reads
    them (the auditor's verifier counts with it too, audit/recompute.py).

    Counts rather than sets, so that heartbeats the chain rules quarantine once the whole log is
    known can be subtracted exactly (an hour stays seen while another heartbeat saw it)."""
    t = hb.time
    h = t - t % HOUR
    c = hours.get(h)
    if c is None:
        c = hours[h] = Counter()
    if delta > 0:
        c.update(map(_STATE_INSTANCE, hb.observations))
    else:
        c.subtract(map(_STATE_INSTANCE, hb.observations))
    if only:
        for o in hb.observations:
            cap = o["capacity"]
            if cap is not None and o["instance"] in only:
                d = decl.setdefault(o["instance"], {}).setdefault(capacity_key(cap), {})
                d[t] = d.get(t, 0) + delta


def _worker(tokens: list[str], lo: int, hi: int, m0: int, m1: int, only: Collection[str], conn: Any) -> None:
    try:
        meta: list[Meta] = []
        hours: Hours = {}
        decl: dict[str, Counts] = {}
        kids: dict[str, str] = {}  # one object per kid, so the result pickles each kid once
        for i in range(lo, hi):
            hb = parse_unverified(tokens[i])
            if m0 <= hb.time < m1:
                kid = kids.setdefault(hb.kid, hb.kid)
                meta.append((i, kid, hb.seq, hb.prev, hb.time, hb.interval, hb.digest))
                count_heartbeat(hb, hours, decl, only, 1)
        conn.send(("ok", meta, by_instance(hours), decl))
    except ProtocolError as exc:
        conn.send(("protocol", exc.rule, exc.detail))
    except BaseException as exc:  # the parent must hear of any failure, or it would wait forever
        conn.send(("error", repr(exc)))
    finally:
        conn.close()


Cells = dict[str, tuple[dict[int, int], dict[int, int]]]  # instance -> (seen, running) counts per hour


def by_instance(hours: Hours) -> Cells:
    """The counts regrouped per instance (also the auditor's, audit.recompute): an instance is
    usually watched by one agent, so one worker, and the parent then merges whole instances
    instead of every (hour, instance) cell."""
    out: Cells = {}
    for h, c in hours.items():
        for (state, inst), n in c.items():
            cell = out.get(inst)
            if cell is None:
                cell = out[inst] = ({}, {})
            cell[0][h] = cell[0].get(h, 0) + n
            if state == "running":
                cell[1][h] = cell[1].get(h, 0) + n
    return out


def _merge(into: Counts, part: Counts) -> None:
    for key, sub in part.items():
        mine = into.get(key)
        if mine is None:
            into[key] = sub
        else:
            for k, v in sub.items():
                mine[k] = mine.get(k, 0) + v


def _parallel(tokens: list[str], workers: int, m0: int, m1: int, only: Collection[str],
              anchors: Mapping[str, Anchor] | None) -> tuple[Activity, list[dict[str, object]]]:
    ctx = multiprocessing.get_context("fork")  # the children read the token list without copying it
    step = -(-len(tokens) // workers)
    procs = []
    for w in range(workers):
        parent, child = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_worker, args=(tokens, w * step, min(len(tokens), (w + 1) * step),
                                              m0, m1, only, child), daemon=True)
        p.start()
        child.close()
        procs.append((p, parent))
    results = []
    for p, conn in procs:
        results.append(conn.recv())
        p.join()
    cells: Cells = {}
    decl: dict[str, Counts] = {}
    meta: list[Meta] = []
    for res in results:
        if res[0] == "protocol":
            raise ProtocolError(res[1], res[2])
        if res[0] != "ok":
            raise RuntimeError(f"billing worker failed: {res[1]}")
        meta.extend(res[1])
        for inst, (seen_n, run_n) in res[2].items():
            mine = cells.get(inst)
            if mine is None:
                cells[inst] = (seen_n, run_n)
            else:  # watched by agents on both sides of the split
                for into, part in zip(mine, (seen_n, run_n), strict=True):
                    for h, n in part.items():
                        into[h] = into.get(h, 0) + n
        for inst, caps in res[3].items():
            _merge(decl.setdefault(inst, {}), caps)
    light = [Heartbeat("", kid, seq, prev, t, iv, [], [], digest)
             for _, kid, seq, prev, t, iv, digest in meta]
    analysis = analyze(light, anchors)
    for i, *_rest, digest in meta:
        if digest in analysis.quarantined:  # every copy counted, every copy taken back
            hb = parse_unverified(tokens[i])
            h = hb.time - hb.time % HOUR
            for o in hb.observations:
                cell = cells[o["instance"]]
                cell[0][h] -= 1
                if o["state"] == "running":
                    cell[1][h] -= 1
            count_heartbeat(hb, {}, decl, only, -1)
    seen = {inst: {h for h, n in c[0].items() if n > 0} for inst, c in cells.items()}
    active = {inst: {h for h, n in c[1].items() if n > 0} for inst, c in cells.items()}
    declared = {inst: {k: sorted(t for t, n in times.items() if n > 0) for k, times in caps.items()}
                for inst, caps in decl.items()}
    return Activity(active, seen, declared, declared_for=only), analysis.chains_json()


def _workers(requested: int | None, n: int) -> int:
    if requested is not None:
        return max(1, requested)
    if n < PARALLEL_MIN or threading.active_count() > 1:
        return 1  # forking a threaded process (a web server) risks locks held by other threads
    return min(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def _all_tokens(items: list[Heartbeat | str]) -> TypeGuard[list[str]]:
    return all(isinstance(x, str) for x in items)


def bill(heartbeats: Iterable[Heartbeat | str], catalog: Catalog | Mapping[str, Any], month: str,
         anchors: Mapping[str, Anchor] | None = None, *, workers: int | None = None) -> BillingResult:
    """Bill a month from its heartbeats (Heartbeat objects or compact JWS strings, unverified here:
    the caller has verified signatures). Deterministic whatever the order, duplicates or workers."""
    cat = load_catalog(catalog)
    m0, m1 = month_bounds(month)
    only = frozenset(lic.instance for lic in cat.licenses if lic.model == "fixed")
    items = heartbeats if isinstance(heartbeats, list) else list(heartbeats)
    n = _workers(workers, len(items))
    if n > 1 and items and _all_tokens(items):
        act, chains = _parallel(items, n, m0, m1, only, anchors)
        return compute(act, cat, month, chains)
    beats = [x if isinstance(x, Heartbeat) else parse_unverified(x) for x in items]
    beats = [hb for hb in beats if m0 <= hb.time < m1]
    analysis = analyze(beats, anchors)
    act = Activity(declared_for=only)
    for hb in beats:
        if hb.digest not in analysis.quarantined:
            act.add_heartbeat(hb)
    return compute(act, cat, month, analysis.chains_json())
