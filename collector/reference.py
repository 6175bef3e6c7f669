"""The reference bill of a month: billing-v1.md over the stored JWS themselves, in bounded memory.

Why not billing.bill over every leaf: it holds every heartbeat parsed (about 50 kB of Python
objects each with its 50 observations), and the export of a month of 1.7 million heartbeats
died at 15.6 GB while still reading them. Here the leaves stream from the database in chunks;
each one's observations are counted per instance and hour (audit.recompute's Tally, as
`tr7-audit verify` counts them) and only its chain fields are kept; the heartbeats the chain
rules then quarantine are read again and taken back. The result is the same function of the
set of heartbeats as billing.bill's (tests/collector compare them).
"""

from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy.engine import Connection

from audit.recompute import Tally, cells_of, tally_activity, tally_heartbeat, to_json_doc
from billing import load_catalog
from billing.compute import compute
from collector import evidence, tlog
from protocol.chain import analyze_links, anchor_map
from protocol.heartbeat import parse_unverified
from protocol.timefmt import month_bounds

FOLD = 5000  # lines counted in a dict before they are folded into the tally's arrays
Progress = Callable[[int, int], None]  # (lines read, lines in all)


def full_result(
    conn: Connection, provider: str, month: str, size: int, catalog: Mapping[str, Any],
    progress: Progress | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(usage, invoice) of the first ``size`` leaves of the month's log, with its anchors; a
    pruned month raises tlog.EvidencePruned (export and amend read the JWS through here)."""
    tlog.require_evidence(conn, provider, month)
    cat = load_catalog(catalog)
    m0, m1 = month_bounds(month)
    only = frozenset(lic.instance for lic in cat.licenses if lic.model == "fixed")
    tally = Tally(m0)
    hours: dict[int, Any] = {}
    decl: dict[str, Any] = {}
    # The chain fields of each line of the month, (kid, seq, prev, time, digest) as analyze_links
    # takes them (~0.4 kB a line, kids shared: Heartbeat objects were ~0.6 kB), and its leaf index
    links: list[tuple[str, int, str, int, str]] = []
    where: list[int] = []
    kids: dict[str, str] = {}
    for i, token in enumerate(tlog.iter_leaf_tokens(conn, provider, month, size)):
        hb = parse_unverified(token)
        if m0 <= hb.time < m1:
            links.append((kids.setdefault(hb.kid, hb.kid), hb.seq, hb.prev, hb.time, hb.digest))
            where.append(i)
            tally_heartbeat(hb, hours, decl, only, 1)
        if (i + 1) % FOLD == 0:
            tally.merge(cells_of(hours), decl)
            hours, decl = {}, {}
            if progress is not None:
                progress(i + 1, size)
    tally.merge(cells_of(hours), decl)
    if progress is not None:
        progress(size, size)
    anchors = anchor_map(parse_unverified(r.jws) for r in evidence.anchor_rows(conn, provider, month))
    analysis = analyze_links(links, anchors)
    taken = [where[k] for k, link in enumerate(links) if link[4] in analysis.quarantined]
    tallies = [tally]
    if taken:  # rare (forks, breaks): read those lines again and take every copy back
        minus = Tally(m0)
        hours, decl = {}, {}
        for _i, token in sorted(tlog.leaf_tokens_at(conn, provider, month, taken).items()):
            tally_heartbeat(parse_unverified(token), hours, decl, only, -1)
        minus.merge(cells_of(hours), decl)
        tallies.append(minus)
    result = compute(tally_activity(tallies, only), cat, month, analysis.chains_json())
    return to_json_doc(result.usage), to_json_doc(result.invoice)
