"""Chain rules per key (heartbeat-v1.md §3): gaps, forks, breaks, month anchors, clock, duplicates."""

from protocol.chain import analyze
from protocol.heartbeat import Heartbeat, parse_unverified, sign_heartbeat, token_digest
from protocol.timefmt import format_time, parse_time


def _hbs(tokens: list[str]) -> list[Heartbeat]:
    return [parse_unverified(t) for t in tokens]


def test_a_complete_chain_is_clean(agent_key, chain):
    result = analyze(_hbs(chain(agent_key, 5)))
    assert result.quarantined == set()
    assert result.chains_json() == [
        {"agent": agent_key.kid, "first_seq": 1, "last_seq": 5, "gaps": [], "forks": [], "breaks": []}
    ]


def test_gap_is_reported_and_nothing_is_quarantined(agent_key, chain):
    tokens = chain(agent_key, 8)
    kept = tokens[:2] + tokens[3:5] + tokens[7:]  # seqs 1, 2, 4, 5, 8
    result = analyze(_hbs(kept))
    report = result.reports[agent_key.kid]
    assert report.gaps == [[3, 3], [6, 7]]
    assert report.breaks == [] and report.forks == []
    assert result.quarantined == set()


def test_fork_quarantines_every_copy_with_that_seq(agent_key, make_payload, chain):
    tokens = chain(agent_key, 4)
    # A restored snapshot signs another seq 3 after the same seq 2.
    hb2 = parse_unverified(tokens[1])
    other3 = sign_heartbeat(agent_key, make_payload(
        agent_key, seq=3, prev=hb2.digest, time=format_time(hb2.time + 300), observations=[]))
    third3 = sign_heartbeat(agent_key, make_payload(
        agent_key, seq=3, prev=hb2.digest, time=format_time(hb2.time + 301), observations=[]))
    result = analyze(_hbs([*tokens, other3, third3]))
    report = result.reports[agent_key.kid]
    assert report.forks == [3]
    assert result.quarantined == {token_digest(tokens[2]), token_digest(other3), token_digest(third3)}
    # seq 4 follows a forked seq: it is not judged a break (rule 4 needs an unforked n).
    assert report.breaks == []


def test_break_quarantines_only_the_successor(agent_key, make_payload, chain):
    tokens = chain(agent_key, 3)
    hb3 = parse_unverified(tokens[2])
    bad4 = sign_heartbeat(agent_key, make_payload(
        agent_key, seq=4, prev="e" * 64, time=format_time(hb3.time + 300)))
    good5 = sign_heartbeat(agent_key, make_payload(
        agent_key, seq=5, prev=token_digest(bad4), time=format_time(hb3.time + 600)))
    result = analyze(_hbs([*tokens, bad4, good5]))
    report = result.reports[agent_key.kid]
    assert report.breaks == [4]
    assert report.forks == [] and report.gaps == []
    assert result.quarantined == {token_digest(bad4)}


def test_month_boundary_break_is_detected_against_the_anchor(agent_key, chain):
    october = chain(agent_key, 10, start="2026-10-31T23:15:00Z")
    anchor = parse_unverified(october[-1])
    # A November chain continuing from seq 11 but linked to October's seq 9, not seq 10.
    wrong = chain(agent_key, 3, start_seq=11, prev=token_digest(october[-2]), start="2026-11-01T02:00:00Z")
    result = analyze(_hbs(wrong), {agent_key.kid: anchor})
    assert result.reports[agent_key.kid].breaks == [11]
    assert result.quarantined == {token_digest(wrong[0])}
    # Correctly linked: no break, no gap, and the anchor itself is not part of this month's report.
    right = chain(agent_key, 3, start_seq=11, prev=anchor.digest, start="2026-11-01T02:00:00Z")
    clean = analyze(_hbs(right), {agent_key.kid: anchor})
    assert clean.quarantined == set()
    assert clean.chains_json()[0] == {
        "agent": agent_key.kid, "first_seq": 11, "last_seq": 13, "gaps": [], "forks": [], "breaks": []
    }


def test_month_boundary_gap_is_counted_from_the_anchor(agent_key, chain):
    october = chain(agent_key, 10, start="2026-10-31T23:15:00Z")
    anchor = parse_unverified(october[-1])
    november = chain(agent_key, 2, start_seq=14, prev="1" * 64, start="2026-11-01T01:00:00Z")
    report = analyze(_hbs(november), {agent_key.kid: anchor}).reports[agent_key.kid]
    assert report.gaps == [[11, 13]]
    # Without the anchor the month simply starts at its lowest seq.
    assert analyze(_hbs(november)).reports[agent_key.kid].gaps == []


def test_time_going_back_is_an_alert_not_a_quarantine(agent_key, make_payload, chain):
    tokens = chain(agent_key, 2, start="2026-11-05T10:00:00Z")
    back = sign_heartbeat(agent_key, make_payload(
        agent_key, seq=3, prev=token_digest(tokens[1]), time="2026-11-05T09:00:00Z"))
    after = sign_heartbeat(agent_key, make_payload(
        agent_key, seq=4, prev=token_digest(back), time="2026-11-05T09:05:00Z"))
    result = analyze(_hbs([*tokens, back, after]))
    report = result.reports[agent_key.kid]
    assert report.clock_back == [3]
    assert result.quarantined == set()
    assert report.breaks == [] and report.forks == []
    assert parse_time("2026-11-05T09:00:00Z") < parse_unverified(tokens[1]).time


def test_the_exact_same_jws_twice_is_one_heartbeat(agent_key, chain):
    tokens = chain(agent_key, 3)
    result = analyze(_hbs([*tokens, tokens[1], tokens[1], tokens[2]]))
    report = result.reports[agent_key.kid]
    assert report.forks == [] and report.breaks == [] and report.gaps == []
    assert result.quarantined == set()


def test_keys_are_analysed_independently(agent_key, other_key, chain):
    a = chain(agent_key, 3)
    b = chain(other_key, 3)
    result = analyze(_hbs([a[0], a[2], *b]))
    assert result.reports[agent_key.kid].gaps == [[2, 2]]
    assert result.reports[other_key.kid].gaps == []
    assert [c["agent"] for c in result.chains_json()] == sorted([agent_key.kid, other_key.kid])


def test_late_arrival_is_recomputed_over_the_whole_set(agent_key, make_payload, chain):
    tokens = chain(agent_key, 4)
    first = analyze(_hbs(tokens))
    assert first.quarantined == set()
    hb2 = parse_unverified(tokens[1])
    late3 = sign_heartbeat(agent_key, make_payload(
        agent_key, seq=3, prev=hb2.digest, time=format_time(hb2.time + 1), observations=[]))
    second = analyze(_hbs([*tokens, late3]))
    assert second.quarantined == {token_digest(tokens[2]), token_digest(late3)}


def test_reusing_the_anchor_seq_is_a_fork_across_the_boundary(agent_key, chain):
    october = chain(agent_key, 10, start="2026-10-31T23:15:00Z")
    anchor = parse_unverified(october[-1])
    # A host restored from an October snapshot signs seq 10 again, in November.
    restored = chain(agent_key, 3, start_seq=10, prev=token_digest(october[-2]), start="2026-11-01T01:00:00Z")
    result = analyze(_hbs(restored), {agent_key.kid: anchor})
    report = result.reports[agent_key.kid]
    assert report.forks == [10]
    assert result.quarantined == {token_digest(restored[0])}
    assert report.breaks == []  # seq 11 follows a forked seq: not judged
    # The anchor itself passed again alongside the month is the same JWS, not a fork.
    same = analyze(_hbs([october[-1], *chain(agent_key, 1, start_seq=11, prev=anchor.digest,
                                                   start="2026-11-01T00:00:00Z")]),
                   {agent_key.kid: anchor})
    assert same.reports[agent_key.kid].forks == [] and same.quarantined == set()


def test_a_forked_last_seq_of_the_month_before_is_no_predecessor(agent_key, make_payload, chain):
    # Billing review: the month before's seq 10 signed twice (A logged first, B), November's seq 11
    # chaining from B was a break against A, its hour unbilled. §3 rule 4: "neither is forked".
    from protocol.chain import ForkedAnchor, anchor_map

    october = chain(agent_key, 10, start="2026-10-31T22:15:00Z")
    hb9 = parse_unverified(october[-2])
    copy_b = sign_heartbeat(agent_key, make_payload(
        agent_key, seq=10, prev=hb9.digest, time=format_time(hb9.time + 301), observations=[]))
    anchors = anchor_map(_hbs([*october[:3], october[-1], copy_b]))  # every copy of the last seq
    forked = anchors[agent_key.kid]
    assert isinstance(forked, ForkedAnchor) and forked.seq == 10
    assert forked.digests == {token_digest(october[-1]), token_digest(copy_b)}
    november = chain(agent_key, 3, start_seq=11, prev=token_digest(copy_b), start="2026-11-01T00:10:00Z")
    result = analyze(_hbs(november), anchors)
    assert result.quarantined == set() and result.reports[agent_key.kid].breaks == []
    # linked to anything at all, still no break: nothing is known to link to
    stray = chain(agent_key, 2, start_seq=11, prev="7" * 64, start="2026-11-01T00:10:00Z")
    assert analyze(_hbs(stray), anchors).quarantined == set()
    # a gap is still counted from the anchor's seq
    later = chain(agent_key, 2, start_seq=13, prev="7" * 64, start="2026-11-01T00:10:00Z")
    assert analyze(_hbs(later), anchors).reports[agent_key.kid].gaps == [[11, 12]]
    # and a third JWS with that seq, in November, is a fork across the boundary as ever
    restored = chain(agent_key, 2, start_seq=10, prev=hb9.digest, start="2026-11-01T00:10:00Z")
    again = analyze(_hbs(restored), anchors)
    assert again.reports[agent_key.kid].forks == [10] and again.quarantined == {token_digest(restored[0])}
    # one copy only: the anchor as before
    assert anchor_map(_hbs(october))[agent_key.kid] == parse_unverified(october[-1])
