"""The full-disk paths a review mended: a checkpoint a reader holds off, shipped answers settled on a
low disk, an event on a full disk, a spool opened on a disk filled to its last byte."""

import logging
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import enrolled_agent, fill_disk, run_cli, write_config

from agent.config import AgentSettings, load_config
from agent.poller import Poller
from agent.service import Service
from agent.shipper import MAX_LINES, SETTLE_STEP, Shipper
from agent.spool import Spool
from agent.spooltypes import Row, SpoolError
from agent.startup import load_key
from protocol.keys import AgentKey, load_private_key, save_private_key

POLLS = [{"adapter": "lab", "platform": "kvm", "ok": True, "error": None}]
PAGE = 4096
ROWS = 70  # a batch of more than two settle steps


def _observations(n: int, salt: int) -> list[dict[str, Any]]:
    # vm names that differ from one heartbeat to the next: rows of ~1.2 kB once zlib has them
    return [{"instance": f"TR7-{i:04d}", "adapter": "lab", "vm": f"vm-{i}-{salt}", "host": "h",
             "state": "running", "capacity": None} for i in range(n)]


def _wait_for_write_lock(path: Path, thread: threading.Thread) -> bool:
    """Whether another connection took the spool's write lock while ``thread`` ran (a TRUNCATE
    checkpoint takes it, then waits for the readers with it held, 200 ms at most: a test thread
    starved that long misses it, and the caller tries again)."""
    probe = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        while thread.is_alive():
            try:
                probe.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                assert "locked" in str(exc), exc
                return True
            probe.execute("ROLLBACK")
            time.sleep(0.001)
        return False
    finally:
        probe.close()


def test_a_checkpoint_a_reader_holds_off_gives_up_and_the_heartbeat_commits(tmp_path: Path) -> None:
    """A TRUNCATE checkpoint (the shipper's, on a low disk) holds the write lock while it waits for
    the readers of the WAL: with the 30 s busy timeout it waited out a `tr7-agent export` reading the
    spool, and the poll's commit, waiting as long behind it, failed and stopped the agent."""
    key = AgentKey.generate()
    path = tmp_path / "spool.db"
    poll = Spool(path)  # the poll thread's connection, as in the service
    for i in range(6):
        poll.append(key, 1_790_000_000 + 60 * i, 60, POLLS, [])
    shipper = Spool(path)  # the shipper thread's
    export = Spool(path, readonly=True)
    tokens = export.unshipped()
    next(tokens)  # `export` half way through: its read transaction holds the WAL
    checkpointed: list[tuple[bool, float]] = []
    committed: list[int] = []

    def checkpoint() -> None:
        t0 = time.monotonic()
        checkpointed.append((shipper.checkpoint(), time.monotonic() - t0))

    def commit() -> None:
        committed.append(poll.append(key, 1_790_000_000 + 60 * 6, 60, POLLS, [])[0])

    for _attempt in range(5):
        waiting = threading.Thread(target=checkpoint)
        waiting.start()
        if _wait_for_write_lock(path, waiting):
            break
        checkpointed.clear()
    else:
        pytest.fail("the checkpoint never held the write lock")
    heartbeat = threading.Thread(target=commit)
    heartbeat.start()
    try:
        heartbeat.join(5)
        assert committed == [7], "the heartbeat's commit waited for the checkpoint, which waited for export"
        waiting.join(5)
        assert checkpointed and checkpointed[0][0] is False and checkpointed[0][1] < 2, checkpointed
    finally:
        assert len(list(tokens)) == 5  # `export` ends; a checkpoint still waiting goes on
        waiting.join(60)
        heartbeat.join(60)
    assert shipper.checkpoint() is True  # with no reader, the WAL is cut to nothing
    assert (tmp_path / "spool.db-wal").stat().st_size == 0
    for s in (poll, shipper, export):
        s.close()


def _low_disk_shipper(tmp_path: Path, mount: Callable[[str, str], Path],
                      collector: Any) -> tuple[Path, Spool, Shipper]:
    """An enrolled agent whose state directory is a 4 MiB tmpfs (under the reserve's 9 MiB: a low
    disk), its spool holding ROWS heartbeats, the WAL cut."""
    state = mount("state-a", "size=4m,mode=0700")  # enrolled_agent's state directory
    enrolled_agent(tmp_path, collector, interval=60, allow_short_interval=False)
    key = load_private_key(state / "agent.key")
    spool = Spool(state / "spool.db")
    now = int(time.time()) + 1
    for i in range(ROWS):
        spool.append(key, now + i, 60, POLLS, _observations(100, i))
    assert spool.checkpoint()  # the room left on the disk is all a settle step has
    return state, spool, Shipper(AgentSettings(collector=collector.url, state_dir=state, interval=60), spool)


def _steps(spool: Spool, monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, bool]]:
    """(rows, recorded) of each settle transaction the shipper asks of the spool (it calls through)."""
    steps: list[tuple[int, bool]] = []
    settle = spool.settle

    def spy(outcomes: list[tuple[Row, str, str | None]], reclaim: bool = True) -> None:
        try:
            settle(outcomes, reclaim)
        except SpoolError:
            steps.append((len(outcomes), False))
            raise
        steps.append((len(outcomes), True))

    monkeypatch.setattr(spool, "settle", spy)
    return steps


def test_answers_a_low_disk_refuses_in_one_step_are_recorded_in_smaller_ones(
        tmp_path: Path, mount, make_collector, monkeypatch: pytest.MonkeyPatch) -> None:
    """A whole batch's deletions took more room than a low disk had, so the answers were never
    recorded, the batch was sent again and again, and the backlog that filled the disk never left
    it. Now a step the disk refuses is halved, the WAL is cut between steps, and what was recorded
    is handed back to the file system at once."""
    collector = make_collector()
    state, spool, shipper = _low_disk_shipper(tmp_path, mount, collector)
    fill_disk(state, leave=16 * PAGE)  # room for the WAL of a 16-row step or less, not of 32 rows
    free = shutil.disk_usage(state).free
    assert free == 16 * PAGE
    steps = _steps(spool, monkeypatch)
    assert shipper.ship_once() == 0.0
    assert steps[0] == (SETTLE_STEP, False), steps  # the disk's own refusal, no fault injected
    assert sum(n for n, ok in steps if ok) == ROWS, steps
    stats = spool.stats()
    assert stats["spool_depth"] == 0 and stats["last_shipped_seq"] == ROWS
    # sent once, each answer recorded: nothing comes back to the collector as a duplicate
    assert collector.query("SELECT status, count(*) FROM received GROUP BY status") == [("accepted", ROWS)]
    assert shutil.disk_usage(state).free > free + 100 * 1024  # the shipped rows' pages, given back
    spool.close()


def test_a_step_refused_behind_a_wal_a_reader_kept_is_recorded_once_the_wal_is_cut(
        tmp_path: Path, mount, make_collector, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reader of the spool (`status`, `export`) held off the checkpoints of the last batch's steps,
    so the WAL kept their pages. With the disk then full, the first step is refused, and every
    smaller one after it went on the end of that WAL, refused down to one row: the batch was sent
    again. The checkpoint after a refused step cuts that WAL (the reader gone) for the next one."""
    collector = make_collector()
    state, spool, shipper = _low_disk_shipper(tmp_path, mount, collector)
    reader = Spool(state / "spool.db", readonly=True)
    tokens = reader.unshipped()
    next(tokens)  # half way through: its read transaction holds the WAL
    shipper.batch_lines = SETTLE_STEP
    assert shipper.ship_once() == 0.0
    assert len(list(tokens)) == ROWS - 1
    reader.close()
    assert (state / "spool.db-wal").stat().st_size > 16 * PAGE  # the recorded step's pages, not checkpointed
    fill_disk(state)
    assert shutil.disk_usage(state).free == 0
    steps = _steps(spool, monkeypatch)
    shipper.batch_lines = MAX_LINES
    assert shipper.ship_once() == 0.0
    assert steps[0] == (SETTLE_STEP, False), steps  # the disk's own refusal, no fault injected
    assert sum(n for n, ok in steps if ok) == ROWS - SETTLE_STEP, steps
    assert spool.stats()["spool_depth"] == 0
    assert collector.query("SELECT status, count(*) FROM received GROUP BY status") == [("accepted", ROWS)]
    spool.close()


def test_a_batch_a_full_disk_cannot_record_is_resent_a_settle_step_at_a_time(
        tmp_path: Path, mount, make_collector) -> None:
    """Answers the disk refuses even one row at a time are lost, and their heartbeats sent again
    (answered duplicate): SETTLE_STEP lines at a time, not the whole batch (up to 16 MiB) again."""
    collector = make_collector()
    state, spool, shipper = _low_disk_shipper(tmp_path, mount, collector)
    filler = fill_disk(state)
    assert shutil.disk_usage(state).free == 0
    delay = shipper.ship_once()
    assert delay is not None and delay > 0  # backed off, not stopped
    assert spool.stats()["spool_depth"] == ROWS and shipper.batch_lines == SETTLE_STEP
    filler.unlink()  # the operator frees the disk
    assert shipper.ship_once() == 0.0
    assert spool.stats()["spool_depth"] == ROWS - SETTLE_STEP
    received = collector.query("SELECT status, count(*) FROM received GROUP BY status ORDER BY status")
    assert received == [("accepted", ROWS), ("duplicate", SETTLE_STEP)]
    spool.close()


def test_an_event_on_a_full_disk_is_logged_and_the_agent_goes_on(
        tmp_path: Path, mount, fake_registry: None, caplog: pytest.LogCaptureFixture) -> None:
    """A clock step recorded while the disk is full stopped the agent (record_event's SpoolError
    made the poll fatal): the event is only worth a line in the log."""
    state = mount("state", "size=1m,mode=0700")
    save_private_key(AgentKey.generate(), state / "agent.key")
    cfg = write_config(tmp_path / "a.toml", {"state_dir": str(state), "interval": 60},
                       [{"name": "lab", "platform": "kvm"}])
    service = Service(load_config(cfg))
    service.key = load_key(service.config)
    service.spool = Spool(state / "spool.db")
    service.poller = Poller(service.config.adapters)
    try:
        assert service.spool.checkpoint()  # the WAL cut: the event's commit needs new room
        filler = fill_disk(state)
        service.clock_back = 7.0  # the main loop saw the wall clock step back: the poll records it
        with caplog.at_level(logging.WARNING):
            service.poll_job()
        assert service.fatal is None
        assert "event=disk_full at=record_event kind=clock_backwards" in caplog.text
        filler.unlink()
        service.clock_back = 7.0
        service.poll_job()
        assert service.fatal is None
        events = service.spool.stats()["clock_events"]
        assert [(e["kind"], e["detail"]["back_seconds"]) for e in events] == [("clock_backwards", 7)]
    finally:
        service.poller.close()
        service.spool.close()


def test_a_spool_on_a_disk_filled_to_its_last_byte_is_said_full_not_damaged(tmp_path: Path, mount) -> None:
    """SQLite cannot make a closed spool's -shm file on a disk filled to its last byte: that read
    as a damaged spool, and `run` told the operator to enrol a new key. With no reserve left to
    give back (a start gives it), the start is refused naming the full disk, and nothing is lost."""
    state = mount("state", "size=1m,mode=0700")
    key = AgentKey.generate()
    save_private_key(key, state / "agent.key")
    spool = Spool(state / "spool.db")
    for i in range(3):
        spool.append(key, 1_790_000_000 + 60 * i, 60, POLLS, [])
    spool.close()  # the last connection: its -wal and -shm files go with it
    assert not (state / "spool.db-shm").exists()
    filler = fill_disk(state)  # no agent.lock either: its pid could not be written (a review)
    full = f"the file system of {state} is full (the spool is not damaged: free some space, and it opens"
    with pytest.raises(SpoolError, match="cannot open it") as err:
        Spool(state / "spool.db")
    assert full in str(err.value)
    cfg = write_config(tmp_path / "a.toml", {"state_dir": str(state), "interval": 60},
                       [{"name": "lab", "platform": "kvm"}])
    res = run_cli("run", "--config", str(cfg))
    assert res.returncode == 1 and "event=startup_failed" in res.stderr
    assert full in res.stderr and "enrol a new key" not in res.stderr, res.stderr
    filler.unlink()
    again = Spool(state / "spool.db")
    assert again.head(key.kid).seq == 3 and len(list(again.unshipped())) == 3
    again.close()


def test_a_spool_with_room_for_its_shm_but_not_one_page_more_opens_and_reads(tmp_path: Path, mount) -> None:
    """Every writable open set auto_vacuum again, and SQLite writes page 1 for it even unchanged:
    with room for the -shm file but not for that page's WAL frame, the spool could not open, so
    `status` and the shipper could not read it. It is set only when it differs now."""
    state = mount("state", "size=1m,mode=0700")
    key = AgentKey.generate()
    spool = Spool(state / "spool.db")
    for i in range(3):
        spool.append(key, 1_790_000_000 + 60 * i, 60, POLLS, [])
    spool.close()
    filler = fill_disk(state, leave=8 * 4096)  # the -shm file's 32 KiB, and nothing more
    try:
        again = Spool(state / "spool.db")
        assert again.head(key.kid).seq == 3 and len(list(again.unshipped())) == 3
        again.close()
    finally:
        filler.unlink()
