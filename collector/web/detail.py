"""Instance page (state and vm timeline, capacities, evidence drill-down) and the agents page."""

import json
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response
from sqlalchemy.engine import Connection

from collector import accounting, alerts, resultcache, tlog
from collector import schema as s
from collector.jwsstore import PRUNED
from collector.web import data
from collector.web.common import SessionDep, conn, month_param, provider_page
from collector.web.common import render as page
from protocol.errors import ProtocolError
from protocol.heartbeat import b64url_decode, parse_unverified
from protocol.timefmt import format_time, month_of, parse_time

router = APIRouter(prefix="/ui", include_in_schema=False)  # pages: not in /openapi.json
PICKER_HOURS = 48  # hours the evidence picker lists, the latest; the heatmap reaches every other
L = s.leaves.c


NAMES = {"a": "active", "i": "inactive", "u": "unknown", "b": "bridged"}


def _intervals(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs of equal hour classes: the state timeline."""
    out: list[dict[str, Any]] = []
    for row in rows:
        for h, code in enumerate(row["codes"]):
            if out and out[-1]["cls"] == code:
                out[-1]["hours"] += 1
            else:
                out.append(
                    {"cls": code, "name": NAMES[code], "from": f"{row['day']}T{h:02d}:00:00Z", "hours": 1}
                )
    return out


@router.get("/p/{provider}/instances/{instance}")
def instance_page(
    provider: str, instance: str, request: Request, sess: SessionDep, month: str | None = None
) -> Response:
    provider_page(sess, provider)
    month = month_param(month)
    d, cap = s.days.c, s.capacities.c
    with conn(request) as c:
        # the month's own catalog (a closed month's as it was billed), as the customer page: the
        # latest one showed its licences and bridge policy on months billed without them
        doc = data.month_catalog(c, provider, month)
        active, seen = data.hour_sets(c, provider, month, [instance])
        vms: dict[str, list[str]] = defaultdict(list)
        for r in c.execute(
            sa.select(d.day, d.vm)
            .where(d.provider == provider, d.day.in_(data.month_days(month)), d.instance == instance)
            .order_by(d.day, d.vm)
        ):
            vms[r.vm].append(format_time(r.day)[:10])
        declared: dict[str, list[int]] = defaultdict(list)
        for r in c.execute(
            sa.select(cap.day, cap.cap, cap.offsets).where(
                cap.provider == provider, cap.day.in_(data.month_days(month)), cap.instance == instance
            )
        ):
            declared[r.cap] += [r.day + int(x) for x in r.offsets.split(",")]
    lics = [x for x in doc.get("licenses", []) if x["instance"] == instance]
    if not lics and not seen:
        raise HTTPException(404, f"no instance {instance} in {provider}'s catalog or evidence")
    rows = data.heatmap(month, active.get(instance, set()), seen.get(instance, set()), data.bridge_max(doc))
    caps = [
        {
            "bundle": k[0],
            "bandwidth_mbps": k[1],
            "vservices": k[2],
            "first": format_time(min(t)),
            "last": format_time(max(t)),
            "count": len(t),
        }
        for k, t in ((json.loads(key), times) for key, times in sorted(declared.items()))
    ]
    seen_hours = sorted(seen.get(instance, set()))
    return page(
        request,
        "instance.html",
        sess,
        provider=provider,
        month=month,
        instance=instance,
        rows=rows,
        timeline=_intervals(rows),
        licenses=lics,
        declared=caps,
        vms=[{"vm": v, "days": len(ds), "first": ds[0], "last": ds[-1]} for v, ds in sorted(vms.items())],
        hours=[format_time(h) for h in seen_hours[-PICKER_HOURS:]],
        hours_hidden=max(0, len(seen_hours) - PICKER_HOURS),  # said on the page (a review)
        pick=format_time(seen_hours[-1]) if seen_hours else None,
    )


def _hour_leaves(
    c: Connection, provider: str, t0: int, t1: int
) -> "Sequence[sa.Row[Any, Any, Any, Any, Any, Any]]":  # quoted: SQLAlchemy 2.0's Row takes one argument
    return c.execute(
        sa.select(L.kid, L.seq, L.time, L.received_at, L.jws, L.digest)
        .where(L.provider == provider, L.month == month_of(t0), L.time >= t0, L.time < t1)
        .order_by(L.time, L.kid, L.seq)
    ).all()


@router.get("/p/{provider}/instances/{instance}/evidence")
def evidence(provider: str, instance: str, hour: str, request: Request, sess: SessionDep) -> Response:
    """The signed heartbeats of one hour that observed the instance, with their JWS lines."""
    provider_page(sess, provider)
    try:
        h0 = parse_time(hour)
    except Exception as exc:
        raise HTTPException(400, "hour is an RFC 3339 UTC time like 2026-10-03T22:00:00Z") from exc
    h0 -= h0 % 3600
    with conn(request) as c:
        names = dict(
            c.execute(sa.select(s.agents.c.kid, s.agents.c.name).where(s.agents.c.provider == provider)).all()
        )
        rows = _hour_leaves(c, provider, h0, h0 + 3600)
        pruned = _pruned_note(c, provider, month_of(h0)) if any(r.jws == PRUNED for r in rows) else None
        # forks and breaks: shown, since they are evidence, but said not to count (billing-v1.md §3)
        quarantined = accounting.quarantined(c, provider, month_of(h0)) if rows else frozenset()
    beats = []
    needle = json.dumps(instance).encode()
    for r in rows:
        # PRUNED: `tr7-collector prune` dropped it, the archived bundle holds it. _may_name: a
        # review timed this page at 226 ms for 40 agents polling every minute, parsing all 2,400
        # heartbeats of the hour, whatever the instance
        if r.jws == PRUNED or not _may_name(r.jws, needle):
            continue
        hb = parse_unverified(r.jws)
        obs = [o for o in hb.observations if o["instance"] == instance]
        if obs:
            beats.append(
                {
                    "agent": names.get(r.kid, r.kid),
                    "kid": r.kid,
                    "seq": r.seq,
                    "time": format_time(r.time),
                    "lag": r.received_at - r.time,
                    "obs": obs,
                    "jws": r.jws,
                    "quarantined": r.digest in quarantined,
                }
            )
    return page(
        request,
        "evidence.html",
        sess,
        provider=provider,
        instance=instance,
        hour=format_time(h0),
        beats=beats,
        pruned=pruned,
    )


def _pruned_note(c: Any, provider: str, month: str) -> str:
    try:
        tlog.require_evidence(c, provider, month)
    except tlog.EvidencePruned as exc:
        return str(exc)
    return f"{provider} {month}: some heartbeats of this hour are not in the database"


@router.get("/p/{provider}/instances/{instance}/agents")
def instance_agents(
    provider: str, instance: str, request: Request, sess: SessionDep, month: str | None = None
) -> Response:
    """Which agents saw the instance, day by day (from the first seen hour of each day): a fragment
    loaded on demand, since it parses heartbeats."""
    provider_page(sess, provider)
    month = month_param(month)
    with conn(request) as c:
        _active, seen = data.hour_sets(c, provider, month, [instance])
        names = dict(
            c.execute(sa.select(s.agents.c.kid, s.agents.c.name).where(s.agents.c.provider == provider)).all()
        )
        first: dict[int, int] = {}
        for h in sorted(seen.get(instance, set())):
            first.setdefault(h - h % 86400, h)
        days = []
        needle = json.dumps(instance).encode()
        for day, h in sorted(first.items()):
            kids = {
                r.kid
                for r in _hour_leaves(c, provider, h, h + 3600)
                if r.jws != PRUNED and _may_name(r.jws, needle)
                and any(o["instance"] == instance for o in parse_unverified(r.jws).observations)
            }
            days.append({"day": format_time(day)[:10], "agents": sorted(names.get(k, k) for k in kids)})
    return page(request, "instance_agents.html", sess, days=days)


def _may_name(jws: str, needle: bytes) -> bool:
    """Whether a heartbeat's payload may observe the instance whose JSON string is ``needle``: a
    payload without it and without any escape does not (decoding base64 costs ~2 us, parsing
    the payload ~50: the fragment parsed every heartbeat of an hour a day, 3.8 s a click with 40
    agents polling every minute). Any doubt is left to the parse."""
    try:
        payload = b64url_decode(jws.split(".")[1], "jws.payload")
    except (IndexError, ProtocolError):
        return True
    return needle in payload or b"\\" in payload


def spool_lags(c: Any, provider: str, month: str) -> dict[str, tuple[int, int]]:
    """Each key's (max, mean rounded) of received_at - time over the month's leaves: from the
    `spool_lag` rows ingest keeps, or from the leaves when those rows do not add up to the log's
    size (an older collector appended without them)."""
    Lag = s.spool_lag.c
    size = sa.select(s.logs.c.size).where(s.logs.c.provider == provider, s.logs.c.month == month)
    rows = c.execute(
        sa.select(Lag.kid, Lag.beats, Lag.lag_sum, Lag.lag_max, size.scalar_subquery().label("size"))
        .where(Lag.provider == provider, Lag.month == month)
    ).all()
    if rows and sum(r.beats for r in rows) == rows[0].size:
        return {r.kid: (int(r.lag_max), round(r.lag_sum / r.beats)) for r in rows}
    lag = L.received_at - L.time
    return {
        r.kid: (int(r.max), round(float(r.avg)))
        for r in c.execute(
            sa.select(L.kid, sa.func.max(lag).label("max"), sa.func.avg(lag).label("avg"))
            .where(L.provider == provider, L.month == month)
            .group_by(L.kid)
        )
    }


def agent_rows(c: Any, provider: str, month: str, now: int) -> list[dict[str, Any]]:
    """Health, adapters' last outcome and spool lag per agent (cached: it reads the month's chain)."""
    health = alerts.agent_health(c, provider, month, now)
    lag = spool_lags(c, provider, month)
    polls: dict[str, Any] = {}
    past = month < month_of(now)  # a past month's page shows its own last heartbeat, not today's
    for a in health:
        if past:
            seq = (a["chain"] or {}).get("last_seq")
            a["last_heartbeat"], a["last_seq"] = None, seq
            where = (month, seq)
        else:
            where = (a["last_heartbeat"][:7] if a["last_heartbeat"] else "", a["last_seq"])
        if where[1] is not None:
            jws = c.execute(
                sa.select(L.jws, L.received_at, L.time)
                .where(
                    L.provider == provider,
                    L.kid == a["kid"],
                    L.month == where[0],  # the (kid, month, seq) index, whole
                    L.seq == where[1],
                )
                .limit(1)
            ).first()
            if jws is not None:
                a["last_heartbeat"] = a["last_heartbeat"] or format_time(int(jws.time))
                if jws.jws != PRUNED:
                    polls[a["kid"]] = (parse_unverified(jws.jws).polls, jws.received_at - jws.time)
    rows = []
    for a in health:
        ch = a["chain"] or {}
        lg = lag.get(a["kid"], (None, None))
        rows.append(
            {
                **a,
                "gaps": ch.get("gaps", []),
                "forks": ch.get("forks", []),
                "breaks": ch.get("breaks", []),
                "polls": polls.get(a["kid"], ([], None))[0],
                "last_lag": polls.get(a["kid"], ([], None))[1],
                "max_lag": lg[0],
                "avg_lag": lg[1],
            }
        )
    return rows


@router.get("/p/{provider}/agents")
def agents_page(provider: str, request: Request, sess: SessionDep, month: str | None = None) -> Response:
    provider_page(sess, provider)
    month, now = month_param(month), int(time.time())
    with conn(request) as c:
        rows = resultcache.cached(
            c,
            ("agents", resultcache.db_id(c), provider, month),
            (now // 60,),
            lambda cc: agent_rows(cc, provider, month, now),
        )
        R = s.rejections.c  # every month's: a count kept since migration 0016 (collector/ingest.py)
        q = sa.select(s.rejections).where(R.provider == provider).order_by(R.rule)
        rejected = [{"rule": r.rule, "lines": int(r.lines), "last_at": format_time(int(r.last_at))}
                    for r in c.execute(q)]
    return page(request, "agents.html", sess, provider=provider, month=month, agents=rows, rejected=rejected,
                past=month < month_of(now))
