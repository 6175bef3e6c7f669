"""Alerts and agent health: forks, breaks, clock going back, clones, unlicensed, over-capacity, silence."""

import re
from collections import defaultdict
from itertools import combinations, pairwise
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from billing import PricingError
from collector import accounting, evidence, roles
from collector import schema as s
from collector.accounts import machine
from collector.accounts import store as acc_store
from protocol.chain import ForkedAnchor, anchor_digests
from protocol.payload import MAX_INT
from protocol.timefmt import format_time, month_bounds, previous_month

SILENT_INTERVALS = 3  # an agent is silent after 3 of its poll intervals without a heartbeat


def last_beats(conn: Connection, provider: str) -> dict[str, Any]:
    """Each key's heartbeat with the latest time (the highest seq on a tie).

    A leaf's month is its time's, so a key's latest time is in its latest month: each key's
    latest month comes from the (kid, month, seq) index, then one group-by per such month (one,
    mostly) reads only those keys' leaves of it. A group-by over all the provider's leaves read
    every month ever logged, on every request.
    """
    L, A = s.leaves.c, s.agents.c
    latest = sa.select(sa.func.max(L.month)).where(L.kid == A.kid).scalar_subquery()
    kids_of: dict[str, list[str]] = defaultdict(list)
    for kid, month in conn.execute(sa.select(A.kid, latest).where(A.provider == provider)):
        if month is not None:
            kids_of[month].append(kid)
    out: dict[str, Any] = {}
    for month, kids in sorted(kids_of.items()):
        where = (L.provider == provider, L.month == month)
        top = (
            sa.select(L.kid, sa.func.max(L.time).label("time"))
            .where(*where, L.kid.in_(kids))
            .group_by(L.kid)
            .subquery()
        )
        q = sa.select(L.kid, L.time, L.seq, L.interval).join(
            top, sa.and_(L.kid == top.c.kid, L.time == top.c.time)
        )
        for r in conn.execute(q.where(*where)):
            if r.kid not in out or r.seq > out[r.kid].seq:
                out[r.kid] = r
    return out


def agent_health(conn: Connection, provider: str, month: str, now: int) -> list[dict[str, Any]]:
    """The keys of the month (enrolled before its end, not revoked before its start), with their
    chain report and last heartbeat; `silent` is about now, so only the current month has it."""
    analysis = evidence.chain_analysis(conn, provider, month)
    last = last_beats(conn, provider)
    m0, m1 = month_bounds(month)
    current = m0 <= now < m1
    A = s.agents.c
    out = []
    for a in conn.execute(
        sa.select(s.agents)
        .where(A.provider == provider, A.enrolled_at < m1, sa.or_(A.revoked_at.is_(None), A.revoked_at >= m0))
        .order_by(A.kid)
    ):
        rep = analysis.reports.get(a.kid)
        lb = last.get(a.kid)
        silent = current and a.revoked_at is None and (
            lb is None or now - lb.time > SILENT_INTERVALS * lb.interval
        )
        out.append(
            {
                "kid": a.kid,
                "name": a.name,
                "enrolled_at": format_time(a.enrolled_at),
                "revoked_at": None if a.revoked_at is None else format_time(a.revoked_at),
                "last_heartbeat": None if lb is None else format_time(lb.time),
                "last_seq": None if lb is None else lb.seq,
                "silent": silent,
                "chain": None if rep is None else {**rep.to_json(), "clock_back": rep.clock_back},
                "healthy": not silent and (rep is None or not (rep.forks or rep.breaks or rep.clock_back)),
            }
        )
    return out


# A Proxmox VM's `vm` is `node/vmid` (heartbeat-v1.md §2) and a VMID is unique in its cluster:
# a live migration or an HA recovery moves `pve1/100` to `pve2/100`, and the hour it happens in
# (or two, across an hour's edge) sees both. Those runs are not clones; a longer one is alerted,
# as is any pair of other ids (no other platform's vm id has a '/').
MIGRATION_HOURS = 2
_PROXMOX_VM = re.compile(r"[^/]+/([0-9]+)")


def _one_proxmox_vm(va: str, vb: str) -> bool:
    a, b = _PROXMOX_VM.fullmatch(va), _PROXMOX_VM.fullmatch(vb)
    return a is not None and b is not None and a.group(1) == b.group(1)


def clones(conn: Connection, provider: str, month: str) -> list[dict[str, Any]]:
    """One instance id running on two different vms in the same hour (a stopped copy, such as a
    powered-off clone or a restored backup, is not a second running instance): one alert per run
    of consecutive such hours, from `hour` to `until` (exclusive), `hours` long."""
    m0, m1 = month_bounds(month)
    d = s.days.c
    dup = (
        sa.select(d.day, d.instance)
        .where(d.provider == provider, d.day >= m0, d.day < m1, d.active != 0)
        .group_by(d.day, d.instance)
        .having(sa.func.count() > 1)
        .subquery()
    )
    rows = conn.execute(
        sa.select(d.day, d.instance, d.vm, d.active)
        .join(dup, sa.and_(d.day == dup.c.day, d.instance == dup.c.instance))
        .where(d.provider == provider, d.active != 0)
    )
    per: dict[tuple[int, str], list[tuple[str, int]]] = defaultdict(list)
    for r in rows:
        per[(r.day, r.instance)].append((r.vm, r.active))
    # One alert per run of consecutive hours of one instance on one pair of vms: one per hour
    # made a month of 2,000 cloned instances 1.6 million alerts (171 MB in one response).
    hours: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    for (day, inst), vms in per.items():
        for (va, ba), (vb, bb) in combinations(sorted(vms), 2):
            both = ba & bb
            if both:
                hours[(inst, va, vb)] += [day + h * 3600 for h in range(24) if both >> h & 1]
    out = []
    for (inst, va, vb), hs in hours.items():
        hs.sort()
        start = prev = hs[0]
        for h in [*hs[1:], None]:
            if h is not None and h == prev + 3600:
                prev = h
                continue
            hours_long = (prev - start) // 3600 + 1
            if not (hours_long <= MIGRATION_HOURS and _one_proxmox_vm(va, vb)):
                out.append({"type": "clone", "instance": inst, "hour": format_time(start),
                            "until": format_time(prev + 3600), "hours": hours_long, "vms": [va, vb]})
            if h is not None:
                start = prev = h
    return sorted(out, key=lambda a: (a["hour"], a["instance"], a["vms"]))


def across_months(conn: Connection, provider: str, month: str) -> list[dict[str, Any]]:
    """What the chain rules cannot see at the boundary with the month before, since they are given
    only its anchor (the key's last heartbeat there), as an auditor's bundle is (§6):

    - `fork_across_months`: seqs of the month below the anchor's that the month before also holds,
      as another JWS (a host restored from a snapshot taken last month);
    - `clock_back_across_months`: seqs of the month before signed right after a heartbeat of this
      month (the clock went back over the boundary: seq 41 on the 1st at 00:00:30, seq 42 on the
      31st at 23:59:50), which the month-by-month rules see only as a gap in each month;
    - `break_across_months`: the heartbeat after the anchor does not chain to it, where the month
      is closed and its anchor frozen (docs/protocol-decisions.md) while the month before's last
      heartbeats came later: the rules, given the frozen anchor, see a gap.

    Against the month before's latest heartbeats, whatever the close froze. Only the anchor's own
    seq reused is quarantined, by the rules (docs/protocol-decisions.md, "Chain analysis across
    the month boundary"); these are alerts."""
    L = s.leaves.c
    before = previous_month(month)
    given = evidence.anchors(conn, provider, month)  # what the month's chain rules are given
    out = []
    for kid, anchor in sorted(evidence.anchors(conn, provider, month, latest=True).items()):
        # A frozen anchor older than the latest: the rules judged neither the latest's own seq
        # reused (a fork) nor the link after it (a break).
        # a forked one is told apart by its copies' digests, not its placeholder digest
        stale = kid not in given or (given[kid].seq, anchor_digests(given[kid])) != (
            anchor.seq, anchor_digests(anchor))
        mine = sa.select(L.seq).where(L.provider == provider, L.month == month, L.kid == kid)
        edge = L.seq <= anchor.seq if stale else L.seq < anchor.seq
        below = set(conn.execute(mine.where(edge)).scalars())
        # past 2^63-1 nothing follows, nor fits a BIGINT; nothing links to a forked anchor
        if stale and anchor.seq < MAX_INT and not isinstance(anchor, ForkedAnchor):
            after = mine.where(L.seq == anchor.seq + 1, L.prev != anchor.digest)
            broken = conn.execute(after).scalars().all()
            if broken:
                out.append({"type": "break_across_months", "agent": kid, "month_before": before,
                            "seqs": [int(broken[0])]})
        if not below:
            continue  # the usual case: the month starts above its anchor
        theirs = set(conn.execute(
            sa.select(L.seq).distinct().where(
                L.provider == provider, L.month == before, L.kid == kid, L.seq >= min(below)
            )
        ).scalars())
        forks = sorted(below & theirs)
        if forks:
            out.append({"type": "fork_across_months", "agent": kid, "month_before": before,
                        "seqs": [int(x) for x in forks]})
        # Walk both months' seqs in order: a seq only the month before holds, right after one only
        # this month holds, is where the time went back (a seq both hold is the fork above).
        steps = sorted(below | theirs)
        back = [q for p, q in pairwise(steps)
                if p in below and p not in theirs and q in theirs and q not in below]
        if back:
            out.append({"type": "clock_back_across_months", "agent": kid, "month_before": before,
                        "seqs": [int(x) for x in back]})
    return out


def alerts(
    conn: Connection, provider: str, month: str, now: int, *, health: list[dict[str, Any]] | None = None,
    boundary: list[dict[str, Any]] | None = None, copies: list[dict[str, Any]] | None = None,
    licensing: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Every alert of the month. ``health``, ``boundary``, ``copies`` and ``licensing``:
    agent_health, across_months, clones and licensing_alerts as already computed (the read API
    and the overview pass the cached ones)."""
    out: list[dict[str, Any]] = []
    for a in agent_health(conn, provider, month, now) if health is None else health:
        ch = a["chain"] or {}
        for kind, seqs in (
            ("fork", ch.get("forks", [])),
            ("break", ch.get("breaks", [])),
            ("clock_back", ch.get("clock_back", [])),
        ):
            out += [{"type": kind, "agent": a["kid"], "name": a["name"], "seq": q} for q in seqs]
        if a["silent"]:
            out.append(
                {
                    "type": "silent_agent",
                    "agent": a["kid"],
                    "name": a["name"],
                    "last_heartbeat": a["last_heartbeat"],
                }
            )
    out += across_months(conn, provider, month) if boundary is None else boundary
    out += clones(conn, provider, month) if copies is None else copies
    out += licensing_alerts(conn, provider, month) if licensing is None else licensing
    return out + account_alerts(conn, provider, now)


def licensing_alerts(conn: Connection, provider: str, month: str) -> list[dict[str, Any]]:
    """The month's alerts from its bill: unlicensed instances, every flag of a usage row
    (over_capacity, no_platform_license), and pricing_error when the catalog cannot price it."""
    out: list[dict[str, Any]] = []
    try:
        usage, _inv = accounting.own_result(conn, provider, month)
    except accounting.AccountingError:
        return out  # no catalog yet: licensing alerts need one
    except PricingError as exc:
        # The month cannot be billed (billing-v1.md §4: no invoice rather than a wrong one): that is
        # an alert itself; the others stand, the licensing ones from the usage, which needs no
        # price (they all vanished with the invoice)
        out.append({"type": "pricing_error", "license": exc.license, "capacity": exc.capacity,
                    "detail": str(exc)})
        usage = accounting.unpriced_usage(conn, provider, month)
    out += [
        {"type": "unlicensed", "instance": u["instance"], "hours": u["hours"]} for u in usage["unlicensed"]
    ]
    # Every flag of a usage row is an alert of its own
    out += [
        {"type": flag, "instance": row["instance"], "license": row["license"], "customer": row["customer"]}
        for row in usage["rows"]
        for flag in row["flags"]
    ]
    return out


ACCOUNT_TYPES = frozenset({"account_overdue", "account_downgraded"})


def for_role(found: list[dict[str, Any]], role: str) -> list[dict[str, Any]]:
    """The alerts ``role`` may read: a customer's payment state needs roles.ACCOUNTS (the vendor
    sees every provider's alerts, never its dealings with its customers)."""
    if roles.allows(role, roles.ACCOUNTS):
        return found
    return [a for a in found if a["type"] not in ACCOUNT_TYPES]


def account_alerts(conn: Connection, provider: str, now: int) -> list[dict[str, Any]]:
    """The customers whose account is overdue or downgraded at ``now`` (billing-v1.md §8), even
    when no tick has recorded the downgrade yet; whatever the month asked, as the state is now's."""
    out = []
    for cust, (acc, _email) in sorted(acc_store.states(conn, provider).items()):
        state, since = machine.effective_since(acc, now)
        if state == machine.OVERDUE and acc.overdue_since is not None:
            since = acc.overdue_since
        if state != machine.ACTIVE:
            # a downgraded account's since is its downgrade (the payment failure's date was shown)
            out.append({"type": f"account_{state}", "customer": cust, "since": format_time(since)})
    return out
