"""The bill from the aggregates equals the full recomputation on breaks, boundary forks and clock jumps."""

import time

import pytest
import sqlalchemy as sa

from collector import accounting, billcache, db, evidence, registry
from collector.ingest import ingest_lines
from protocol.timefmt import month_bounds

MONTH = "2026-03"
HOUR = 3600


@pytest.fixture(autouse=True)
def _beside_from_the_first_leaf(monkeypatch):
    """These months are small: the rules are read beside from the first leaf on (not 10,000)."""
    from collector import beside

    monkeypatch.setattr(beside, "BESIDE_FROM", 0)


def _month_with_a_break_and_a_boundary_fork(settings, tools) -> tuple[str, str]:
    db.write_tx(settings.engine, lambda c: registry.apply_catalog(c, tools.catalog()))
    a, b = tools.Agent("a"), tools.Agent("b")
    for ag in (a, b):
        tools.enrol(settings, "acme", ag, 0)
    m0 = month_bounds(MONTH)[0]
    run = {"TR7-0001": "running"}
    lines = [a.beat(m0 - 2 * HOUR, run), a.beat(m0 - HOUR, run)]  # February: the anchors
    lines += [b.beat(m0 - 3 * HOUR, run), b.beat(m0 - 2 * HOUR, run)]
    b_anchor_prev = b.prev
    lines.append(b.beat(m0 - HOUR, run))
    for h in range(6):
        lines.append(a.beat(m0 + h * HOUR + 60, run))
    a.prev = "e" * 64  # a beat that links to nothing: a break, its hour rebuilt from the others
    lines.append(a.beat(m0 + 6 * HOUR + 60, run))
    lines.append(a.beat(m0 + 6 * HOUR + 120, run))
    lines.append(a.beat(m0 + 5 * HOUR, run))  # the clock goes back an hour
    lines.append(a.beat(m0 + 9 * HOUR + 60, run))
    # A restored snapshot of b signs February's last seq again, in March, and goes on from it.
    b.seq, b.prev = 3, b_anchor_prev
    for h in range(3):
        lines.append(b.beat(m0 + (12 + h) * HOUR + 60, {"TR7-0001": "running", "TR7-0002": "stopped"}))
    statuses = {r["status"] for r in ingest_lines(settings.engine, lines)}
    assert statuses == {"accepted"}
    return a.kid, b.kid


def test_aggregates_equal_the_full_recomputation(settings, tools):
    a, b = _month_with_a_break_and_a_boundary_fork(settings, tools)
    with db.read_conn(settings.engine) as c:
        agg = accounting.own_result(c, "acme", MONTH)
        full = accounting.full_result(c, "acme", MONTH)
    assert accounting.same_docs(agg, full)
    chains = {ch["agent"]: ch for ch in agg[0]["chains"]}
    assert chains[a]["breaks"] == [9] and chains[a]["forks"] == []
    assert chains[b]["forks"] == [3] and chains[b]["first_seq"] == 3 and chains[b]["gaps"] == []
    # Hour 6 keeps the unbroken beat of that hour; b's forked seq 3 adds nothing, its 4 and 5 do.
    row = next(r for r in agg[0]["rows"] if r["license"] == "SL-1")
    assert row["active_hours"] == 6 + 1 + 1 + 2


def test_the_streamed_reference_equals_billing_bill_over_the_same_lines(settings, tools, monkeypatch):
    """export's reference bill reads the leaves in chunks and keeps counts, not heartbeats (a
    month of 1.7 million died at 15.6 GB): the same documents as billing.bill over every line,
    with a break, a fork the rules quarantine, and a fixed license whose declared capacity counts."""
    from billing import bill, load_catalog
    from collector import reference, tlog
    from protocol.heartbeat import parse_unverified

    _a, b = _month_with_a_break_and_a_boundary_fork(settings, tools)
    fixed = tools.catalog()
    fixed["licenses"][0]["model"] = "fixed"
    db.write_tx(settings.engine, lambda c: registry.apply_catalog(c, fixed, retroactive=True))
    monkeypatch.setattr(reference, "FOLD", 3)  # fold the counts many times
    monkeypatch.setattr(tlog, "LEAF_CHUNK", 4)  # read the leaves in many chunks
    with db.read_conn(settings.engine) as c:
        catalog = accounting.catalog_for(c, "acme", MONTH)[1]
        size = tlog.log_size(c, "acme", MONTH)
        seen: list[tuple[int, int]] = []
        streamed = reference.full_result(c, "acme", MONTH, size, catalog,
                                         progress=lambda n, t: seen.append((n, t)))
        tokens = tlog.leaf_tokens(c, "acme", MONTH)
        anchors = {r.kid: parse_unverified(r.jws) for r in accounting.evidence.anchor_rows(c, "acme", MONTH)}
    whole = bill(tokens, load_catalog(catalog), MONTH, anchors=anchors, workers=1)
    assert accounting.same_docs(streamed, (accounting._plain(whole.usage), accounting._plain(whole.invoice)))
    assert seen[-1] == (size, size) and len(seen) > 2
    assert {ch["agent"]: ch["forks"] for ch in streamed[0]["chains"]}[b] == [3]


def _two_agents_in_march(settings, tools, doc=None):
    """Agents a (with a break) and b, a February anchor each; returns them to sign on."""
    db.write_tx(settings.engine, lambda c: registry.apply_catalog(c, doc or tools.catalog()))
    a, b = tools.Agent("a"), tools.Agent("b")
    for ag in (a, b):
        tools.enrol(settings, "acme", ag, 0)
    m0 = month_bounds(MONTH)[0]
    run = {"TR7-0001": "running"}
    lines = [a.beat(m0 - HOUR, run), b.beat(m0 - HOUR, run)]
    lines += [a.beat(m0 + h * HOUR + 60, run) for h in range(4)]
    a.prev = "e" * 64
    lines += [a.beat(m0 + 4 * HOUR + 60, run), b.beat(m0 + 7 * HOUR, run)]
    assert {r["status"] for r in ingest_lines(settings.engine, lines)} == {"accepted"}
    return a, b


def _in_one_snapshot(settings) -> tuple[tuple[dict, dict], tuple[dict, dict]]:
    with db.read_conn(settings.engine) as c:
        billcache.clear()
        return accounting.own_result(c, "acme", MONTH), accounting.full_result(c, "acme", MONTH)


def _idle_beside() -> None:
    """Wait for a read beside left by an earlier test (one in flight per process)."""
    from collector import beside

    assert beside._free.acquire(timeout=60)
    beside._free.release()


def _ingest_between_the_snapshots(settings, monkeypatch, lines: list[str]) -> list[object]:
    """Make the next bill's read beside log ``lines`` just before its own snapshot (after the
    bill's), the bill's day rows waiting until then; returns the read beside's results."""
    import threading

    from collector import beside

    _idle_beside()
    done, seen = threading.Event(), []
    sizes, rules, bits = beside.log_sizes, beside._rules, evidence.month_bits

    def sizes_after_an_ingest(conn, provider, month):
        if threading.current_thread().name.startswith("tr7-chain-rules") and not done.is_set():
            assert {r["status"] for r in ingest_lines(settings.engine, lines)} == {"accepted"}
            done.set()
        return sizes(conn, provider, month)

    def recorded(*args):
        seen.append(out := rules(*args))
        return out

    def bits_after_it(*args):
        assert done.wait(30)
        return bits(*args)

    monkeypatch.setattr(beside, "log_sizes", sizes_after_an_ingest)
    monkeypatch.setattr(beside, "_rules", recorded)
    monkeypatch.setattr(evidence, "month_bits", bits_after_it)
    return seen


def test_chain_rules_read_beside_see_the_bills_snapshot_while_the_log_grows(settings, tools, monkeypatch):
    """collector/beside.py runs the chain rules on a second connection, in a snapshot taken a moment
    later: leaves logged in that moment (here a fork of a's seq 2 and more of b) must not enter
    them, or the bill's chains and quarantine would not be those of its hours."""
    a, b = _two_agents_in_march(settings, tools)
    m0 = month_bounds(MONTH)[0]
    a.seq, a.prev = 2, "0" * 64
    later = [a.beat(m0 + HOUR + 90, {"TR7-0001": "running"}), b.beat(m0 + 9 * HOUR, {"TR7-0002": "running"})]
    seen = _ingest_between_the_snapshots(settings, monkeypatch, later)
    agg, full = _in_one_snapshot(settings)
    assert len(seen) == 1 and seen[0] is not None  # read beside, over the first connection's leaves only
    assert accounting.same_docs(agg, full)
    assert {ch["agent"]: ch["forks"] for ch in agg[0]["chains"]}[a.kid] == []
    agg2, full2 = _in_one_snapshot(settings)  # the next bill sees them
    assert accounting.same_docs(agg2, full2)
    assert {ch["agent"]: ch["forks"] for ch in agg2[0]["chains"]}[a.kid] == [2]


def test_chain_rules_are_read_again_in_order_when_the_anchors_log_grew(settings, tools, monkeypatch):
    """A February heartbeat logged between the two snapshots gives c an anchor (seq 1 before its
    seq 3 of March: a gap): the rules read beside are dropped and run on the bill's own connection."""
    _two_agents_in_march(settings, tools)
    c_agent, m0 = tools.Agent("c"), month_bounds(MONTH)[0]
    tools.enrol(settings, "acme", c_agent, 0)
    late = [c_agent.beat(m0 - HOUR, {"TR7-0001": "running"})]
    c_agent.beat(m0 - HOUR // 2)  # seq 2, never sent
    assert ingest_lines(settings.engine, [c_agent.beat(m0 + 2 * HOUR)])[0]["status"] == "accepted"
    seen = _ingest_between_the_snapshots(settings, monkeypatch, late)
    agg, full = _in_one_snapshot(settings)
    assert seen == [None]
    assert accounting.same_docs(agg, full)
    assert {ch["agent"]: ch["gaps"] for ch in agg[0]["chains"]}[c_agent.kid] == []
    agg2, full2 = _in_one_snapshot(settings)
    assert accounting.same_docs(agg2, full2)
    assert {ch["agent"]: ch["gaps"] for ch in agg2[0]["chains"]}[c_agent.kid] == [[2, 2]]


def test_a_second_bill_meanwhile_reads_in_order(settings, tools):
    """At most one read beside at a time: a bill that finds it taken does not wait for it."""
    from collector import beside, evidence

    _two_agents_in_march(settings, tools)
    _idle_beside()
    assert beside._free.acquire(blocking=False)
    try:
        with db.read_conn(settings.engine) as c:
            rules = beside.ChainRules(c, "acme", MONTH)
            assert rules.job is None and rules.result() == evidence.chain_analysis(c, "acme", MONTH)
    finally:
        beside._free.release()


def _bill_in_child(url: str, out) -> None:
    from collector import beside
    from collector.db import make_engine

    engine = make_engine(url)
    with db.read_conn(engine) as c:
        rules = beside.ChainRules(c, "acme", MONTH)
        out.put((rules.job is not None, rules.result().chains_json()))


def test_a_process_forked_after_a_bill_reads_beside_too(settings, tools):
    """The read beside runs on a pool thread; a child forked after one (multiprocessing's default
    on Linux) has no copy of that thread, and its first bill waited for it forever."""
    import multiprocessing

    _two_agents_in_march(settings, tools)
    (want, _), _ = _in_one_snapshot(settings)  # the pool's thread has started in this process
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    child = ctx.Process(target=_bill_in_child, args=(settings.db_url, out))
    child.start()
    try:
        beside_used, chains = out.get(timeout=60)
    finally:
        child.join(10)
        if child.is_alive():
            child.kill()
    assert beside_used and chains == want["chains"]



def test_a_bill_does_not_wait_for_a_second_connection_when_the_pool_is_busy(settings, tools):
    """The read beside takes a second connection from the pool the bill holds its first from.
    With every other one checked out (by requests that may wait for this very bill), it waited
    the pool's 30 s timeout before the bill went on; now the bill reads the rules itself."""
    from contextlib import ExitStack

    _two_agents_in_march(settings, tools)
    engine = settings.engine
    with ExitStack() as stack:
        for _ in range(engine.pool.size() + engine.pool._max_overflow - 1):
            stack.enter_context(engine.connect())
        with db.read_conn(engine) as c:
            billcache.clear()
            t = time.perf_counter()
            agg = accounting.own_result(c, "acme", MONTH)
            took = time.perf_counter() - t
            full = accounting.full_result(c, "acme", MONTH)
    assert accounting.same_docs(agg, full)
    assert took < 10  # the pool's timeout is 30 s: this is whether it was waited for


def test_a_burst_of_page_requests_on_a_cold_month_is_not_held_for_the_pool_timeout(settings, tools):
    """As the pages meet it: the pool's 15 connections held by requests for one month not cached
    yet, one computing the bill and 14 waiting for it (collector/resultcache.py). Each took 30 s."""
    import threading

    from collector import resultcache
    from collector.web import data

    _two_agents_in_march(settings, tools)
    engine = settings.engine
    n = engine.pool.size() + engine.pool._max_overflow
    all_in = threading.Barrier(n)
    took: list[float] = []
    errors: list[BaseException] = []

    def request() -> None:
        try:
            with db.read_conn(engine) as c:
                c.execute(sa.text("SELECT 1"))  # the page's own first read (its snapshot)
                all_in.wait(timeout=60)
                t = time.perf_counter()
                assert data.results(c, "acme", MONTH) is not None
                took.append(time.perf_counter() - t)
        except BaseException as exc:
            errors.append(exc)

    billcache.clear()
    resultcache._cache.clear()
    threads = [threading.Thread(target=request) for _ in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert not errors, errors
    assert len(took) == n and max(took) < 10


def test_an_error_while_starting_the_read_beside_does_not_turn_it_off(settings, tools, monkeypatch):
    """A database error while the read beside was being started kept its one slot taken: every
    later bill of the process read in order, with no word."""
    from collector import beside

    _two_agents_in_march(settings, tools)
    real, calls = beside.log_sizes, []

    def once_failing(conn, provider, month):
        calls.append(1)
        if len(calls) == 1:
            raise sa.exc.OperationalError("SELECT size FROM logs", {}, Exception("connection reset"))
        return real(conn, provider, month)

    _idle_beside()
    monkeypatch.setattr(beside, "log_sizes", once_failing)
    with db.read_conn(settings.engine) as c, pytest.raises(sa.exc.OperationalError):
        beside.ChainRules(c, "acme", MONTH)
    with db.read_conn(settings.engine) as c:
        rules = beside.ChainRules(c, "acme", MONTH)
        assert rules.job is not None
        assert rules.result() == evidence.chain_analysis(c, "acme", MONTH)


def test_a_catalog_id_with_an_escaped_lone_surrogate_bills_as_before(settings, tools):
    """A customer id is any non-empty string, "\\ud800" included (json escapes it): the bill's
    cache, encoded by msgspec, refused it, and bill, close and export of the provider failed."""
    import json

    odd = json.loads('"c\\ud800"')
    doc = tools.catalog(customers=[odd])
    doc["licenses"][0]["customer"] = odd
    _two_agents_in_march(settings, tools, doc)
    with db.read_conn(settings.engine) as c:
        full = accounting.full_result(c, "acme", MONTH)
        billcache.clear()
        agg = accounting.own_result(c, "acme", MONTH)
        again = accounting.own_result(c, "acme", MONTH)  # from the cache
    assert accounting.same_docs(agg, full) and again == agg
    assert agg[1]["lines"][0]["customer"] == odd


def test_a_bill_does_not_wait_for_the_read_beside_to_connect(settings, tools, monkeypatch):
    """A read beside still connecting when the bill has read its day rows is given up: the bill
    runs the rules on its own connection, and the read, once connected, reads nothing."""
    import threading

    from collector import beside

    _two_agents_in_march(settings, tools)
    _idle_beside()
    go, seen = threading.Event(), []
    side, rules = beside._side_engine, beside._rules

    def connecting(engine):
        assert go.wait(60)  # until the bill is done
        return side(engine)

    def recorded(*args):
        seen.append(out := rules(*args))
        return out

    monkeypatch.setattr(beside, "_side_engine", connecting)
    monkeypatch.setattr(beside, "_rules", recorded)
    agg, full = _in_one_snapshot(settings)
    go.set()
    _idle_beside()
    assert seen == [None] and accounting.same_docs(agg, full)



def test_a_small_month_reads_its_rules_in_order(settings, tools, monkeypatch):
    """Below BESIDE_FROM leaves no thread and no second connection: they cost what they save."""
    from collector import beside

    _two_agents_in_march(settings, tools)
    monkeypatch.setattr(beside, "BESIDE_FROM", 10_000)
    with db.read_conn(settings.engine) as c:
        rules = beside.ChainRules(c, "acme", MONTH)
        assert rules.job is None and rules.result() == evidence.chain_analysis(c, "acme", MONTH)


def test_a_bill_at_interpreter_shutdown_reads_in_order(settings, tools, monkeypatch):
    """Once the interpreter is shutting down the pool takes no job (RuntimeError): a bill from an
    atexit handler or a thread still running then failed instead of reading in order."""
    import concurrent.futures.thread as cft

    from collector import beside

    _two_agents_in_march(settings, tools)
    _idle_beside()
    monkeypatch.setattr(cft, "_shutdown", True)
    with db.read_conn(settings.engine) as c:
        rules = beside.ChainRules(c, "acme", MONTH)
        assert rules.job is None and rules.result() == evidence.chain_analysis(c, "acme", MONTH)
    _idle_beside()  # the slot was given back
