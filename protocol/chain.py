"""Chain rules over a set of heartbeats per key (heartbeat-v1.md §3): gaps, forks, breaks, clock.

Decisions where the spec is silent (also in docs/protocol-decisions.md):
- Gaps are counted from the anchor's seq (the key's last heartbeat of the month before) when
  one is known, else from the month's lowest seq; seqs before that are not this month's gap.
- `time` going back is checked between consecutive present, unforked seqs (anchor included).
- A heartbeat of the month with the anchor's seq but another JWS is a fork (quarantined).
"""

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import pairwise

from protocol.heartbeat import Heartbeat


@dataclass
class ChainReport:
    """What billing-v1.md's usage.json calls a chain, plus the clock alerts."""

    agent: str
    first_seq: int
    last_seq: int
    gaps: list[list[int]] = field(default_factory=list)
    forks: list[int] = field(default_factory=list)
    breaks: list[int] = field(default_factory=list)
    clock_back: list[int] = field(default_factory=list)  # seqs whose time is before their predecessor's

    def to_json(self) -> dict[str, object]:
        return {
            "agent": self.agent, "first_seq": self.first_seq, "last_seq": self.last_seq,
            "gaps": self.gaps, "forks": self.forks, "breaks": self.breaks,
        }


@dataclass
class ChainAnalysis:
    reports: dict[str, ChainReport]
    quarantined: set[str]  # digests of heartbeats that count for nothing (forks, breaks)

    def chains_json(self) -> list[dict[str, object]]:
        return [self.reports[k].to_json() for k in sorted(self.reports)]


def _gaps(seqs: list[int], start: int) -> list[list[int]]:
    gaps: list[list[int]] = []
    last = start
    for s in seqs:
        if s > last + 1:
            gaps.append([last + 1, s - 1])
        last = max(last, s)
    return gaps


def analyze_key(
    kid: str, beats: Iterable[Heartbeat], anchor: Heartbeat | None = None
) -> tuple[ChainReport, set[str]]:
    """Analyse one key's heartbeats of a month; return its report and the quarantined digests."""
    by_seq: dict[int, dict[str, Heartbeat]] = defaultdict(dict)
    for hb in beats:
        by_seq[hb.seq][hb.digest] = hb  # the exact same JWS twice is one heartbeat (rule 6)
    seqs = sorted(by_seq)
    report = ChainReport(kid, seqs[0], seqs[-1])
    quarantined: set[str] = set()
    forked = {s for s in seqs if len(by_seq[s]) > 1}
    if anchor is not None and anchor.seq in by_seq and anchor.digest not in by_seq[anchor.seq]:
        # This month reuses the seq of last month's final heartbeat with another JWS: a fork
        # across the boundary (a restored snapshot); this month's copies count for nothing.
        forked.add(anchor.seq)
    report.forks = sorted(forked)
    for s in report.forks:
        quarantined.update(by_seq[s])
    start = anchor.seq if anchor is not None and anchor.seq < seqs[0] else seqs[0]
    report.gaps = _gaps(seqs, start)

    single: dict[int, Heartbeat] = {s: next(iter(by_seq[s].values())) for s in seqs if s not in forked}
    if anchor is not None and anchor.seq not in by_seq:
        single.setdefault(anchor.seq, anchor)
    for s in seqs:
        hb = single.get(s)
        before = single.get(s - 1)
        if hb is not None and before is not None and hb.prev != before.digest:
            report.breaks.append(s)
            quarantined.add(hb.digest)
    ordered = sorted(single)
    for a, b in pairwise(ordered):
        if single[b].time < single[a].time and b in by_seq:
            report.clock_back.append(b)
    return report, quarantined


def analyze(beats: Iterable[Heartbeat], anchors: Mapping[str, Heartbeat] | None = None) -> ChainAnalysis:
    """Analyse every key's chain in a set of heartbeats (a month's log), with month-boundary anchors."""
    per_key: dict[str, list[Heartbeat]] = defaultdict(list)
    for hb in beats:
        per_key[hb.kid].append(hb)
    anchors = anchors or {}
    reports: dict[str, ChainReport] = {}
    quarantined: set[str] = set()
    for kid, hbs in per_key.items():
        reports[kid], q = analyze_key(kid, hbs, anchors.get(kid))
        quarantined |= q
    return ChainAnalysis(reports, quarantined)
