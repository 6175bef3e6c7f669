"""Ingest against another process's commits between a batch's read snapshot and its write."""

import time

import sqlalchemy as sa

from collector import db, ingest
from collector import schema as s
from protocol.timefmt import next_month

H = 3600


def _leaves(settings) -> list[tuple[str, int, int]]:
    with db.read_conn(settings.engine) as c:
        q = sa.select(s.leaves.c.kid, s.leaves.c.seq, s.leaves.c.idx).order_by(s.leaves.c.idx)
        return [tuple(r) for r in c.execute(q)]


def _counting_attempts(monkeypatch) -> list[int]:
    """How many times each write transaction of ingest ran (a redone batch runs twice)."""
    attempts: list[int] = []
    real = ingest.write_tx

    def counting(engine, fn):
        attempts.append(0)

        def once(conn):
            attempts[-1] += 1
            return fn(conn)

        return real(engine, once)

    monkeypatch.setattr(ingest, "write_tx", counting)
    return attempts


def test_lines_another_process_logged_meanwhile_are_duplicates_and_the_batch_is_not_redone(
    settings, tools, monkeypatch
):
    """The batch's read snapshot found none of its lines logged; another process then logged
    some of them and lines of another key. The log grew since the snapshot, so the write looks
    the batch's lines up again: those lines are duplicates, the rest take the next indexes."""
    now = int(time.time())
    a, b = tools.Agent("a"), tools.Agent("b")
    for agent in (a, b):
        tools.enrol(settings, "acme", agent, now - 10 * H)
    lines = [a.beat(now - 900 + 60 * i, {"TR7-1": "running"}) for i in range(10)]
    others = [b.beat(now - 900 + 60 * i, {"TR7-2": "running"}) for i in range(2)]
    real_sizes = ingest._log_sizes

    def other_process_commits_after_the_snapshot(conn, providers):
        monkeypatch.setattr(ingest, "_log_sizes", real_sizes)  # the other process's own batch
        sizes = real_sizes(conn, providers)
        assert [x["status"] for x in ingest.ingest_lines(settings.engine, [*others, *lines[3:7]], now)] == [
            "accepted"
        ] * 6
        return sizes

    monkeypatch.setattr(ingest, "_log_sizes", other_process_commits_after_the_snapshot)
    attempts = _counting_attempts(monkeypatch)
    res = ingest.ingest_lines(settings.engine, lines, now)
    assert [x["status"] for x in res] == ["accepted"] * 3 + ["duplicate"] * 4 + ["accepted"] * 3
    assert [x["seq"] for x in res] == list(range(1, 11))
    assert attempts[-1] == 1  # looked up in the write, not found by a unique-key error and redone
    logged = _leaves(settings)
    assert [idx for _, _, idx in logged] == list(range(12))
    assert sorted(seq for kid, seq, _ in logged if kid == a.kid) == list(range(1, 11))


def test_a_unique_key_clash_while_appending_redoes_the_batch_and_answers_duplicate(
    settings, tools, monkeypatch
):
    """Whatever the shortcut above believes, the unique key decides: when the append itself
    meets a line logged meanwhile (here the sizes are read after the other commit, so the write
    does not look), the database's unique-key error, PostgreSQL's from its COPY included, redoes
    the batch, which then answers duplicate for it. Never a 500, never a second leaf."""
    now = int(time.time())
    a = tools.Agent("a")
    tools.enrol(settings, "acme", a, now - 10 * H)
    lines = [a.beat(now - 900 + 60 * i, {"TR7-1": "running"}) for i in range(6)]
    real_sizes = ingest._log_sizes

    def sizes_read_after_another_commit(conn, providers):
        monkeypatch.setattr(ingest, "_log_sizes", real_sizes)  # the other process's own batch
        other = ingest.ingest_lines(settings.engine, lines[2:4], now)
        assert [x["status"] for x in other] == ["accepted"] * 2
        with db.read_conn(settings.engine) as fresh:
            return real_sizes(fresh, providers)

    monkeypatch.setattr(ingest, "_log_sizes", sizes_read_after_another_commit)
    attempts = _counting_attempts(monkeypatch)
    res = ingest.ingest_lines(settings.engine, lines, now)
    assert [x["status"] for x in res] == ["accepted"] * 2 + ["duplicate"] * 2 + ["accepted"] * 2
    assert attempts[-1] == 2
    assert [seq for _, seq, _ in _leaves(settings)] == [3, 4, 1, 2, 5, 6]


def _waits_for_a_lock(settings, thread) -> bool:
    """Whether ``thread``'s transaction waits for a lock: on PostgreSQL, until a backend of the test
    database waits on one (a sleep was no proof: a slow start passed for a wait); on SQLite, where
    the whole write transaction is the lock, whether it is still running 2 s on."""
    if settings.engine.dialect.name != "postgresql":
        thread.join(2.0)
        return thread.is_alive()
    deadline = time.monotonic() + 30
    with settings.engine.connect() as conn:
        while thread.is_alive() and time.monotonic() < deadline:
            waiting = conn.execute(sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND datname = current_database() AND pid <> pg_backend_pid()")).scalar_one()
            conn.rollback()
            if waiting:
                return True
            time.sleep(0.02)
    return False


def _three_months_back(settings, tools) -> tuple[str, str, str, list[str]]:
    """Months K, M, N before the current one; an agent with 4 heartbeats in K logged and 4 more
    of K's signed, for the close races."""
    from collector import registry
    from protocol.timefmt import month_bounds, month_of, previous_month

    n = previous_month(month_of(int(time.time())))
    m = previous_month(n)
    k = previous_month(m)
    k0 = month_bounds(k)[0]
    db.write_tx(settings.engine, lambda c: registry.apply_catalog(c, tools.catalog()))
    a = tools.Agent()
    tools.enrol(settings, "acme", a, k0 - 30 * 86400)
    beats = [a.beat(k0 + i * 1800, {"TR7-0001": "running"}) for i in range(8)]
    assert {r["status"] for r in ingest.ingest_lines(settings.engine, beats[:4])} == {"accepted"}
    return k, m, n, beats


def test_a_close_that_waited_for_the_close_before_it_locks_the_months_that_close_adds(
    settings, tools
) -> None:
    """A review reproduced it on PostgreSQL: closing N read the months it adjusts (none: M was
    open), then waited for M's log held by M's close; once that committed, N adjusted K and M
    without K's log locked, so late heartbeats of K committed while N froze K's adjustment.
    N's close now starts again when that list changed, and holds K's log."""
    import threading

    from collector import accounting

    k, m, n, beats = _three_months_back(settings, tools)
    db.write_tx(settings.engine, lambda c: accounting.close(c, settings, "acme", k))
    m_held, m_release, n_held, n_release = (threading.Event() for _ in range(4))
    results: dict[str, object] = {}

    def held(month: str, reached: threading.Event, release: threading.Event):
        def run(c):
            done = accounting.close(c, settings, "acme", month)
            reached.set()
            release.wait(30)  # the close's transaction stays open
            return done
        return run

    closers = [threading.Thread(target=lambda: results.update(
        m=db.write_tx(settings.engine, held(m, m_held, m_release))))]
    closers[0].start()
    assert m_held.wait(30)
    closers.append(threading.Thread(target=lambda: results.update(
        n=db.write_tx(settings.engine, held(n, n_held, n_release)))))
    closers[1].start()
    # N's close reads its months, then waits for M's log
    assert _waits_for_a_lock(settings, closers[1]), "N's close did not wait for M's"
    m_release.set()
    assert n_held.wait(30)
    late = threading.Thread(
        target=lambda: results.update(late=ingest.ingest_lines(settings.engine, beats[4:])))
    late.start()
    waited = _waits_for_a_lock(settings, late)
    n_release.set()
    for t in (*closers, late):
        t.join(60)
    assert waited, "late heartbeats of K committed while N's close was freezing K's adjustment"
    assert {r["status"] for r in results["late"]} == {"accepted"}  # type: ignore[union-attr]
    assert [x["adjusts"] for x in results["n"].billed["lines"] if x["adjusts"]] == []  # type: ignore[attr-defined]


def test_a_close_holds_back_late_heartbeats_of_the_closed_months_it_adjusts(settings, tools) -> None:
    """A concurrency review's reading: closing N froze the adjustments of K (closed, as was M)
    over several statements while a late heartbeat of K could commit between them. The close now
    locks K's log too, so the heartbeat waits and is adjusted, whole, on the next open month."""
    import threading

    from collector import accounting

    k, m, n, beats = _three_months_back(settings, tools)
    for month in (k, m):
        db.write_tx(settings.engine, lambda c, month=month: accounting.close(c, settings, "acme", month))

    closing, release, results = threading.Event(), threading.Event(), []

    def close_n(c):
        done = accounting.close(c, settings, "acme", n)
        closing.set()
        release.wait(30)  # the close's transaction stays open while the late heartbeats come
        return done

    closer = threading.Thread(target=lambda: results.append(db.write_tx(settings.engine, close_n)))
    closer.start()
    assert closing.wait(30)
    late = threading.Thread(target=lambda: results.append(ingest.ingest_lines(settings.engine, beats[4:])))
    late.start()
    waited = _waits_for_a_lock(settings, late)
    release.set()
    closer.join(60)
    late.join(60)
    assert waited, "the late heartbeats of K committed while N's close was computing K's adjustments"
    closed_n, answers = results
    assert {r["status"] for r in answers} == {"accepted"}
    # N froze K's adjustment without them (none: K's first two hours were closed with K); the
    # next open month carries them, whole
    assert not [x for x in closed_n.billed["lines"] if x["adjusts"] == k]
    with db.read_conn(settings.engine) as c:
        now = accounting.invoice(c, "acme", next_month(n))
    assert [(x["quantity"], x["adjusts"]) for x in now["lines"]] == [(2, k)]
