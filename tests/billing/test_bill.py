"""bill(): month filter, chain quarantine, chains in usage, parallel parsing, order independence."""

from collections.abc import Iterator, Mapping

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing import Activity, bill, compute, load_catalog
from protocol.errors import ProtocolError


def test_only_the_months_heartbeats_count(kit):
    a, b = kit.Agent(), kit.Agent()
    beats = [a.beat("2026-10-31T23:59:59Z", kit.obs("X")), a.beat("2026-11-01T00:00:00Z", kit.obs("X")),
             a.beat("2026-11-30T23:59:59Z", kit.obs("X")), a.beat("2026-12-01T00:00:00Z", kit.obs("X")),
             b.beat("2026-12-01T05:00:00Z", kit.obs("X"))]
    res = bill(beats, kit.catalog(kit.lic("SL-1", "X", start="2026-10-01T00:00:00Z")), kit.MONTH)
    assert kit.row(res.usage, "SL-1")["active_hours"] == 2
    assert res.usage["chains"] == [{"agent": a.kid, "first_seq": 2, "last_seq": 3, "gaps": [], "forks": [],
                                    "breaks": []}]


def test_forked_heartbeats_count_for_nothing(kit):
    a = kit.Agent()
    beats = kit.hourly(a, "X", "2 00:00", 3)
    twin = kit.Agent()
    twin.key = a.key
    fork = twin.beat("2 05:10", kit.obs("X"), seq=3, prev=beats[1].digest)
    res = bill([*beats, fork], kit.catalog(kit.lic("SL-1", "X")), kit.MONTH)
    assert kit.row(res.usage, "SL-1")["active_hours"] == 2  # hours 00 and 01; 02 and 05 were seq 3
    assert res.usage["chains"][0]["forks"] == [3]


def test_a_break_quarantines_the_heartbeat_after_it(kit):
    a = kit.Agent()
    first = a.beat("2 00:10", kit.obs("X"))
    broken = a.beat("2 01:10", kit.obs("X"), prev="ab" * 32)
    res = bill([first, broken], kit.catalog(kit.lic("SL-1", "X")), kit.MONTH)
    assert kit.row(res.usage, "SL-1")["active_hours"] == 1
    assert res.usage["chains"][0]["breaks"] == [2]


def test_anchor_checks_the_first_heartbeat_of_the_month(kit):
    a = kit.Agent()
    anchor = a.beat("2026-10-31T23:55:00Z", kit.obs("X"))
    a.prev = "cd" * 32  # the agent lost its state: seq 2 does not chain to the anchor
    nov = a.beat("2026-11-01T00:00:00Z", kit.obs("X"))
    cat = kit.catalog(kit.lic("SL-1", "X"))
    assert kit.row(bill([nov], cat, kit.MONTH).usage, "SL-1")["active_hours"] == 1
    res = bill([nov], cat, kit.MONTH, anchors={a.kid: anchor})
    assert kit.row(res.usage, "SL-1")["active_hours"] == 0 and res.usage["chains"][0]["breaks"] == [2]


class LazyDeclared(Mapping):
    """A collector-style lazy mapping that records which instances billing asked for."""

    def __init__(self, data):
        self.data, self.asked = data, []

    def __getitem__(self, key):
        self.asked.append(key)
        return self.data[key]

    def __iter__(self) -> Iterator:
        raise AssertionError("billing must not iterate every instance's declarations")

    def __len__(self) -> int:
        raise AssertionError("billing must not size the declarations")


def test_compute_from_a_collector_style_activity(kit):
    h = kit.T("2 10:00")
    declared = LazyDeclared({"F": {("pro", None, None): [h + 60]}, "P": {("pro", None, None): [h + 60]}})
    hours = {"F": {h}, "P": {h, h + 3600}}
    act = Activity(active=hours, seen=hours, declared=declared)
    fixed = [{"from": "2026-10-01T00:00:00Z", "bundle": "basic"}]
    cat = load_catalog(kit.catalog(kit.lic("SL-F", "F", "fixed", capacity=fixed), kit.lic("SL-P", "P")))
    res = compute(act, cat, kit.MONTH, [])
    assert kit.row(res.usage, "SL-F")["flags"] == ["over_capacity"]
    assert declared.asked == ["F"]  # P has no fixed hour: its declarations are never read
    assert res.invoice["lines"][0]["quantity"] == 2


def test_strings_and_heartbeats_give_the_same_result(pool):
    beats, tokens, cat = pool
    as_beats = bill(beats, cat, "2026-11")
    assert as_beats.invoice["lines"] and as_beats.invoice["device_days"] and as_beats.usage["unlicensed"]
    flags = {r["license"]: r["flags"] for r in as_beats.usage["rows"]}
    assert flags["SL-F"] == ["over_capacity"] and flags["SL-G"] == []  # G's over-use was in a fork
    assert bill(tokens, cat, "2026-11", workers=1) == as_beats


@pytest.mark.parametrize("workers", [2, 3])
def test_parallel_parsing_gives_the_same_result(pool, workers):
    beats, tokens, cat = pool
    # Duplicates and a fork spread over the workers: quarantine is decided over all of them.
    tokens = tokens + tokens[:5] + tokens[-3:]
    assert bill(tokens, cat, "2026-11", workers=workers) == bill(beats, cat, "2026-11")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_result_depends_on_the_set_of_heartbeats_only(pool, data):
    beats, _, cat = pool
    expected = bill(beats, cat, "2026-11")
    order = data.draw(st.permutations(range(len(beats))))
    dups = data.draw(st.lists(st.integers(0, len(beats) - 1), max_size=10))
    shuffled = [beats[i] for i in order] + [beats[i] for i in dups]
    assert bill(shuffled, cat, "2026-11") == expected


@pytest.mark.parametrize("workers", [1, 2])
def test_a_malformed_line_is_a_protocol_error(pool, workers):
    _, tokens, cat = pool
    bad = tokens[3].replace(".", "..", 1)
    with pytest.raises(ProtocolError) as err:
        bill([*tokens, bad], cat, "2026-11", workers=workers)
    assert err.value.rule == "jws.format"
