"""Property: the one-pass chain analysis gives analyze_key's exact reports and quarantine on any chain."""

from collections import defaultdict
from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.chain import ChainAnalysis, Link, _linear_key, analyze, analyze_key, analyze_links

KIDS = ["k1", "k2", "k3"]


@st.composite
def key_month(draw: st.DrawFn, kid: str) -> tuple[list[Link], Link | None]:
    """One key's month: a true chain, then gaps, breaks, forks, duplicates, clock jumps, an anchor."""
    first = draw(st.integers(1, 5))
    n = draw(st.integers(1, 12))
    true: list[Link] = []
    prev, t = f"{kid}-before", 1_000
    for seq in range(first - 1, first + n):
        t += draw(st.sampled_from([300, 300, 0, -50, 900]))  # some clocks go back or stand still
        true.append(Link(kid, seq, prev, t, f"{kid}-{seq}"))
        prev = true[-1].digest
    before, month = true[0], true[1:]
    beats: list[Link] = []
    for i, link in enumerate(month):
        what = draw(st.sampled_from(["keep"] * 5 + ["drop", "break", "fork", "dup", "fork-dup"]))
        if what == "drop":
            continue
        if what == "break":
            link = link._replace(prev=f"{kid}-elsewhere-{i}", digest=f"{link.digest}-b")
        beats.append(link)
        if what in ("fork", "fork-dup"):
            jump = draw(st.integers(-400, 400))
            beats.append(link._replace(digest=f"{link.digest}-f", time=link.time + jump))
        if what in ("dup", "fork-dup"):
            beats.append(link)  # the exact same JWS twice
    if not beats:
        beats.append(month[0])
    anchor = None
    choice = draw(st.sampled_from(["none", "true", "other", "inside", "inside-other", "above"]))
    if choice == "true":
        anchor = before
    elif choice == "other":
        jump = draw(st.integers(-400, 400))
        anchor = before._replace(digest=f"{kid}-other-anchor", time=before.time + jump)
    elif choice in ("inside", "inside-other"):
        at = draw(st.sampled_from(beats))  # the month reuses the anchor's seq
        anchor = at if choice == "inside" else at._replace(digest=f"{kid}-reused-{at.seq}")
    elif choice == "above":
        anchor = before._replace(seq=beats[-1].seq + draw(st.integers(0, 3)), digest=f"{kid}-ahead")
    return draw(st.permutations(beats)), anchor


@st.composite
def months(draw: st.DrawFn) -> tuple[list[Link], dict[str, Link]]:
    kids = draw(st.lists(st.sampled_from(KIDS), min_size=1, max_size=3, unique=True))
    beats: list[Link] = []
    anchors: dict[str, Link] = {}
    for kid in kids:
        chain, anchor = draw(key_month(kid))
        beats.extend(chain)
        if anchor is not None:
            anchors[kid] = anchor
    return draw(st.permutations(beats)), anchors


def reference(beats: list[Link], anchors: dict[str, Link]) -> ChainAnalysis:
    """The general rules, key by key (what analyze did before the one-pass path)."""
    per_key: dict[str, list[Link]] = defaultdict(list)
    for b in beats:
        per_key[b.kid].append(b)
    reports, quarantined = {}, set()
    for kid, chain in per_key.items():
        reports[kid], q = analyze_key(kid, chain, anchors.get(kid))  # type: ignore[arg-type]
        quarantined |= q
    return ChainAnalysis(reports, quarantined)


@settings(max_examples=400, deadline=None)
@given(months())
def test_analyze_matches_the_general_rules(month: tuple[list[Link], dict[str, Link]]) -> None:
    beats, anchors = month
    want = reference(beats, anchors)
    for got in (analyze(beats, anchors), analyze_links([tuple(b) for b in beats], anchors)):  # type: ignore[arg-type]
        assert got.reports == want.reports  # gaps, forks, breaks and clock alerts alike
        assert got.quarantined == want.quarantined
        assert got.chains_json() == want.chains_json()
    for kid, report in want.reports.items():
        # Gaps: the missing seqs after the anchor (or the first seq) up to the last, as maximal ranges.
        present = {b.seq for b in beats if b.kid == kid}
        anchor = anchors.get(kid)
        start = anchor.seq if anchor is not None and anchor.seq < min(present) else min(present)
        missing = sorted(set(range(start + 1, max(present) + 1)) - present)
        assert [x for a, b in report.gaps for x in range(a, b + 1)] == missing
        assert all(a <= b for a, b in report.gaps)
        assert all(a2 > b1 + 1 for (_a1, b1), (a2, _b2) in pairwise(report.gaps))  # maximal ranges


@settings(max_examples=300, deadline=None)
@given(key_month("k1"))
def test_one_pass_answers_every_chain_without_a_repeated_seq(month: tuple[list[Link], Link | None]) -> None:
    beats, anchor = month
    unique: dict[int, Link] = {}
    for b in beats:
        unique.setdefault(b.seq, b)  # drop fork copies and duplicates: the one-pass case
    chain = list(unique.values())
    got = _linear_key("k1", list(chain), anchor)  # type: ignore[arg-type]
    assert got is not None
    assert got == analyze_key("k1", chain, anchor)  # type: ignore[arg-type]


def test_a_repeated_seq_is_left_to_the_general_rules() -> None:
    a = Link("k", 1, "z", 10, "d1")
    fork = a._replace(digest="d1-other")
    assert _linear_key("k", [a, fork], None) is None
    result = analyze([a, fork])  # type: ignore[list-item]
    assert result.reports["k"].forks == [1]
    assert result.quarantined == {"d1", "d1-other"}
