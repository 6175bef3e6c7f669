"""Chain rules over a set of heartbeats per key (heartbeat-v1.md §3): gaps, forks, breaks, clock.

Decisions where the spec is silent (also in docs/protocol-decisions.md):
- Gaps are counted from the anchor's seq (the key's last heartbeat of the month before) when
  one is known, else from the month's lowest seq; seqs before that are not this month's gap.
- `time` going back is checked between consecutive present, unforked seqs (anchor included).
- A heartbeat of the month with the anchor's seq but another JWS is a fork (quarantined).
- When the key's last seq of the month before was itself forked there (several JWS), every copy
  is its anchor (ForkedAnchor): it counts for the gaps, and rule 4 checks no link to it
  ("neither is forked"), nor rule 5 a time (a false break quarantined a billed hour).
"""

from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import pairwise
from operator import itemgetter
from typing import Any, NamedTuple, Protocol

from protocol.heartbeat import Heartbeat


class ForkedAnchor(NamedTuple):
    """A key's last seq of the month before, signed as several JWS (a fork there)."""

    kid: str
    seq: int
    digests: frozenset[str]
    time: int  # the latest copy's

    @property
    def digest(self) -> str:
        return ""  # the digest of no heartbeat: nothing links to a forked anchor


Anchor = Heartbeat | ForkedAnchor
LinkRow = tuple[str, int, str, int, str]  # (kid, seq, prev, time, digest), as a store's row reads


class Beat(Protocol):
    """What the general chain rules read of a heartbeat: a Heartbeat, or a Link of one."""

    @property
    def seq(self) -> int: ...
    @property
    def prev(self) -> str: ...
    @property
    def time(self) -> int: ...
    @property
    def digest(self) -> str: ...


def anchor_digests(anchor: Anchor) -> frozenset[str]:
    """The digests of an anchor's copies: one, or every copy of a forked seq."""
    return anchor.digests if isinstance(anchor, ForkedAnchor) else frozenset({anchor.digest})


def anchor_map(given: Iterable[Any]) -> dict[str, Anchor]:
    """Each key's anchor from what is given for it (heartbeats, or rows with kid, seq, time and
    digest): the copy of its highest seq, or a ForkedAnchor when that seq came as several JWS."""
    tops: dict[str, tuple[int, dict[str, Any]]] = {}  # kid -> (its highest seq, digest -> copy)
    for hb in given:
        top = tops.get(hb.kid)
        if top is None or top[0] < hb.seq:
            tops[hb.kid] = (hb.seq, {hb.digest: hb})
        elif top[0] == hb.seq:
            top[1].setdefault(hb.digest, hb)
    return {
        kid: next(iter(c.values())) if len(c) == 1 else ForkedAnchor(
            kid, seq, frozenset(c), max(hb.time for hb in c.values()))
        for kid, (seq, c) in tops.items()
    }


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
    kid: str, beats: Iterable[Beat], anchor: Anchor | None = None
) -> tuple[ChainReport, set[str]]:
    """Analyse one key's heartbeats of a month; return its report and the quarantined digests."""
    by_seq: dict[int, dict[str, Beat]] = defaultdict(dict)
    for hb in beats:
        by_seq[hb.seq][hb.digest] = hb  # the exact same JWS twice is one heartbeat (rule 6)
    seqs = sorted(by_seq)
    report = ChainReport(kid, seqs[0], seqs[-1])
    quarantined: set[str] = set()
    forked = {s for s in seqs if len(by_seq[s]) > 1}
    mine = anchor_digests(anchor) if anchor is not None else frozenset()
    unlinked = None  # a forked anchor's own copy among the beats: present, but linked to by none
    if anchor is not None and anchor.seq in by_seq:
        if not by_seq[anchor.seq].keys() <= mine:
            # This month reuses the seq of last month's final heartbeat with another JWS: a fork
            # across the boundary (a restored snapshot); this month's copies count for nothing.
            forked.add(anchor.seq)
        elif isinstance(anchor, ForkedAnchor):
            unlinked = anchor.seq
    report.forks = sorted(forked)
    for s in report.forks:
        quarantined.update(by_seq[s])
    start = anchor.seq if anchor is not None and anchor.seq < seqs[0] else seqs[0]
    report.gaps = _gaps(seqs, start)

    single: dict[int, Beat] = {s: next(iter(by_seq[s].values())) for s in seqs
                                    if s not in forked and s != unlinked}
    if anchor is not None and anchor.seq not in by_seq and not isinstance(anchor, ForkedAnchor):
        single.setdefault(anchor.seq, anchor)
    for s in seqs:
        beat = single.get(s)
        before = single.get(s - 1)
        if beat is not None and before is not None and beat.prev != before.digest:
            report.breaks.append(s)
            quarantined.add(beat.digest)
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
    kid: str, chain: list[LinkRow], anchor: Anchor | None
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
        forked_anchor = isinstance(anchor, ForkedAnchor)
        if i < len(seqs) and seqs[i] == anchor.seq:
            if forked_anchor:
                return None  # the month before's forked last seq met again: the general rules decide
            if chain[i][4] != anchor.digest:
                # The month reuses the anchor's seq with another JWS: a fork across the boundary;
                # that copy counts for nothing and takes no part in breaks or the clock.
                report.forks = [anchor.seq]
                quarantined.add(chain[i][4])
                chain = chain[:i] + chain[i + 1 :]
        elif not isinstance(anchor, ForkedAnchor):  # forked: no predecessor (rule 4: "neither is forked")
            link = (kid, anchor.seq, anchor.prev, anchor.time, anchor.digest)
            chain = [*chain[:i], link, *chain[i:]]
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
    links: Iterable[Link | tuple[str, int, str, int, str]], anchors: Mapping[str, Anchor] | None = None
) -> ChainAnalysis:
    """analyze() over (kid, seq, prev, time, digest) tuples, e.g. a store's rows read as they are."""
    per_key: dict[str, list[LinkRow]] = defaultdict(list)
    for link in links:
        per_key[link[0]].append(link)
    anchors = anchors or {}
    reports: dict[str, ChainReport] = {}
    quarantined: set[str] = set()
    for kid, chain in per_key.items():
        anchor = anchors.get(kid)
        done = _linear_key(kid, chain, anchor)
        if done is None:
            done = analyze_key(kid, [Link(*link) for link in chain], anchor)
        reports[kid], q = done
        quarantined |= q
    return ChainAnalysis(reports, quarantined)


def analyze(beats: Iterable[Heartbeat], anchors: Mapping[str, Anchor] | None = None) -> ChainAnalysis:
    """Analyse every key's chain in a set of heartbeats (a month's log), with month-boundary anchors."""
    return analyze_links(((hb.kid, hb.seq, hb.prev, hb.time, hb.digest) for hb in beats), anchors)
