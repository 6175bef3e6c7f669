"""Chain rules over a set of heartbeats per key (heartbeat-v1.md §3): gaps, forks, breaks, clock.

Decisions where the spec is silent (also in docs/protocol-decisions.md):
- Gaps are counted from the anchor's seq (the key's last heartbeat of the month before) when
  one is known, else from the month's lowest seq; seqs before that are not this month's gap.
- `time` going back is checked between consecutive present, unforked seqs (anchor included).
- A heartbeat of the month with the anchor's seq but another JWS is a fork (quarantined).
"""

from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import pairwise
from operator import itemgetter
from typing import NamedTuple

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
    """Missing seqs between ``start`` (at most seqs[0]) and the sorted, distinct ``seqs``."""
    return [[a + 1, b - 1] for a, b in pairwise([start, *seqs]) if b > a + 1]


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


class Link(NamedTuple):
    """What the chain rules read of a heartbeat (a plain tuple of these five works as well)."""

    kid: str
    seq: int
    prev: str
    time: int
    digest: str


def _linear_key(
    kid: str, chain: list[Link], anchor: Heartbeat | None
) -> tuple[ChainReport, set[str]] | None:
    """analyze_key's result in one pass over the seq-sorted beats, or None when a seq repeats.

    Without a repeated seq nothing is forked except, maybe, the anchor's seq; a break is then a
    beat whose prev is not the digest of the beat just before it with seq - 1, and time going back
    is checked between neighbours of the sorted list (the anchor inserted at its place).
    """
    chain.sort(key=_SEQ)
    seqs = [link[1] for link in chain]
    if len(set(seqs)) != len(seqs):
        return None  # a fork or a duplicate: the general rules decide
    report = ChainReport(kid, seqs[0], seqs[-1])
    quarantined: set[str] = set()
    start = seqs[0]
    anchor_at = -1
    if anchor is not None:
        if anchor.seq < start:
            start = anchor.seq
        i = bisect_left(seqs, anchor.seq)
        if i < len(seqs) and seqs[i] == anchor.seq:
            if chain[i][4] != anchor.digest:
                # The month reuses the anchor's seq with another JWS: a fork across the boundary;
                # that copy counts for nothing and takes no part in breaks or the clock.
                report.forks = [anchor.seq]
                quarantined.add(chain[i][4])
                chain = chain[:i] + chain[i + 1 :]
        else:
            chain = [*chain[:i], (kid, anchor.seq, anchor.prev, anchor.time, anchor.digest), *chain[i:]]
            anchor_at = i  # the anchor is a predecessor only: never reported itself
    report.gaps = _gaps(seqs, start)
    breaks, clock_back = report.breaks, report.clock_back
    if chain:
        _k, p_seq, _p, p_time, p_digest = chain[0]
        for j in range(1, len(chain)):
            _k, seq, prev, t, digest = chain[j]
            if j != anchor_at:
                if seq == p_seq + 1 and prev != p_digest:
                    breaks.append(seq)
                    quarantined.add(digest)
                if t < p_time:
                    clock_back.append(seq)
            p_seq, p_time, p_digest = seq, t, digest
    return report, quarantined


_SEQ = itemgetter(1)


def analyze_links(
    links: Iterable[Link | tuple[str, int, str, int, str]], anchors: Mapping[str, Heartbeat] | None = None
) -> ChainAnalysis:
    """analyze() over (kid, seq, prev, time, digest) tuples, e.g. a store's rows read as they are."""
    per_key: dict[str, list[Link]] = defaultdict(list)
    for link in links:
        per_key[link[0]].append(link)  # type: ignore[arg-type]
    anchors = anchors or {}
    reports: dict[str, ChainReport] = {}
    quarantined: set[str] = set()
    for kid, chain in per_key.items():
        anchor = anchors.get(kid)
        done = _linear_key(kid, chain, anchor)
        if done is None:
            done = analyze_key(kid, [Link(*link) for link in chain], anchor)  # type: ignore[misc]
        reports[kid], q = done
        quarantined |= q
    return ChainAnalysis(reports, quarantined)


def analyze(beats: Iterable[Heartbeat], anchors: Mapping[str, Heartbeat] | None = None) -> ChainAnalysis:
    """Analyse every key's chain in a set of heartbeats (a month's log), with month-boundary anchors."""
    return analyze_links(((hb.kid, hb.seq, hb.prev, hb.time, hb.digest) for hb in beats), anchors)
