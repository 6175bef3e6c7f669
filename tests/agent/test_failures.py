"""Loud failures: disk full, unwritable state dir, corrupt spool, missing key. Never healthy-but-idle."""

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from conftest import AGENT, agent_env, fill_disk, run_cli, spooled_state, write_config

from agent import diskreserve, polljob, signedkeys
from agent import spool as spool_mod
from agent.config import load_config
from agent.service import Service
from agent.spool import Spool
from protocol.heartbeat import ZERO_HASH, parse_unverified, token_digest
from protocol.keys import AgentKey, save_private_key


def _config(tmp_path: Path, state: Path, instances: int = 3) -> Path:
    # No collector: nothing ships, so the spool only grows.
    return write_config(tmp_path / "agent.toml",
                        {"state_dir": str(state), "interval": 1, "allow_short_interval": True},
                        [{"name": "lab", "platform": "kvm", "instances": instances}])


def _poll_until_unsigned(service: Service, now: list[float]) -> int:
    """Poll until the disk is full and the reserve cannot be made again: two polls in a row that
    sign nothing. Returns the polls made."""
    polls = still = 0
    while still < 2:
        assert polls < 400, "the disk never filled"
        before = service.spool.head(service.key.kid).seq
        now[0] += 1
        service.poll_job()
        polls += 1
        unsigned = service.spool.head(service.key.kid).seq == before
        still = still + 1 if service.disk_full and unsigned else 0
    return polls


def test_a_full_disk_skips_polls_ships_the_spool_and_signs_again(tmp_path: Path, mount, make_collector,
                                                                 fake_registry: None,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash-consistency review: the agent stopped at the first `disk full`, then every restart
    was refused (the state directory's write probe), `export` could not open the spool, and what an
    operator freed was eaten by failed writes: the backlog that filled the disk never shipped. Now
    the slot is skipped, the reserve is given back, the spool ships, and signing resumes."""
    monkeypatch.setattr(diskreserve, "SIZE", 128 << 10)  # the tmpfs is 1 MiB; the defaults are 8 MiB,
    monkeypatch.setattr(diskreserve, "START_SIZE", 48 << 10)  # 256 KiB
    monkeypatch.setattr(diskreserve, "HEADROOM", 64 << 10)  # and 1 MiB
    monkeypatch.setattr(spool_mod, "WAL_PAGES", 16)  # and the WAL in proportion (the default is 1 MiB)
    state = mount("state", "size=1m,mode=0700")
    reserve = state / diskreserve.NAME
    collector = make_collector()
    cfg = write_config(tmp_path / "agent.toml",
                       {"collector": collector.url, "state_dir": str(state), "interval": 1,
                        "allow_short_interval": True},
                       [{"name": "lab", "platform": "kvm", "instances": 300}])
    assert run_cli("enroll", "--config", str(cfg), "--token", "tok-1").returncode == 0
    collector.kill()  # down while the spool fills the disk
    now = [float(int(time.time()))]
    monkeypatch.setattr(polljob.time, "time", lambda: now[0])
    service = Service(load_config(cfg))
    service.start()
    try:
        assert service.scheduler is not None
        service.scheduler.pause()  # polled by hand below; the shipper thread runs as in service
        assert reserve.stat().st_size == 128 << 10  # made while there was room
        _poll_until_unsigned(service, now)
        assert service.fatal is None
        assert reserve.stat().st_size == 48 << 10  # given back but for a start's room
        assert service.metrics.registry.get_sample_value("tr7_agent_disk_full") == 1
        signed = service.spool.head(service.key.kid).seq
        for _ in range(5):  # while the disk is low nothing is signed: the reserve's room is the shipper's
            now[0] += 1
            service.poll_job()
        assert service.fatal is None and service.spool.head(service.key.kid).seq == signed
        # everything committed is intact, and `export` reads it on the full disk (it could not open it)
        export = run_cli("export", "--config", str(cfg), "--out", str(tmp_path / "out.jws"))
        assert export.returncode == 0, export.stderr
        tokens = (tmp_path / "out.jws").read_text().split()
        assert [parse_unverified(t).seq for t in tokens] == list(range(1, signed + 1))
        prev = ZERO_HASH
        for tok in tokens:
            assert parse_unverified(tok).prev == prev
            prev = token_digest(tok)

        collector.start()  # back: the shipper thread records its shipments in the reserve's room
        deadline = time.monotonic() + 60
        while service.spool.stats()["spool_depth"]:
            assert time.monotonic() < deadline and service.fatal is None, f"not shipped: {service.fatal!r}"
            time.sleep(0.2)
        got = collector.query("SELECT seq FROM heartbeats ORDER BY seq")
        assert [s for (s,) in got] == list(range(1, signed + 1))
        now[0] += 1
        service.poll_job()  # room again: the reserve made again, and signed
        assert service.fatal is None and not service.disk_full
        assert service.metrics.registry.get_sample_value("tr7_agent_disk_full") == 0
        assert service.spool.head(service.key.kid).seq == signed + 1
        assert reserve.stat().st_size == 128 << 10

        # A restart on a disk filled to its last byte by another program (a diff review: the spool's
        # -shm file could not be made, read as a damaged spool): the reserve makes the room.
        service.terminating = True
        assert service.shutdown() == 0
        filler = fill_disk(state)
        assert shutil.disk_usage(state).free < 4096
        service = Service(load_config(cfg))
        service.start()
        assert service.scheduler is not None
        service.scheduler.pause()
        assert not reserve.exists() or reserve.stat().st_size < 128 << 10  # given back for the start
        now[0] += 1
        service.poll_job()  # no room for the reserve: not signed
        assert service.disk_full and service.spool.head(service.key.kid).seq == signed + 1
        filler.unlink()  # the operator frees the disk
        now[0] += 1
        service.poll_job()
        assert not service.disk_full and service.spool.head(service.key.kid).seq == signed + 2
        assert service.fatal is None and reserve.stat().st_size == 128 << 10
    finally:
        service.terminating = True
        service.shutdown()


def test_read_only_state_dir(tmp_path: Path, mount) -> None:
    state = mount("ro", "size=64k,ro")
    res = run_cli("run", "--config", str(_config(tmp_path, state)))
    assert res.returncode == 1
    assert f"state directory {state} is not writable: Read-only file system" in res.stderr


def test_state_dir_under_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    res = run_cli("run", "--config", str(_config(tmp_path, tmp_path / "file" / "state")))
    assert res.returncode == 1 and "is not a directory (a file is in its way)" in res.stderr
    res = run_cli("run", "--config", str(_config(tmp_path, tmp_path / "file")))  # it said "File exists"
    assert res.returncode == 1 and f"state directory {tmp_path / 'file'} is not a directory" in res.stderr


def test_missing_key_says_enroll(tmp_path: Path) -> None:
    res = run_cli("run", "--config", str(_config(tmp_path, tmp_path / "s")))
    assert res.returncode == 1 and "run `tr7-agent enroll" in res.stderr


def test_corrupt_spool_file(tmp_path: Path) -> None:
    state = tmp_path / "s"
    state.mkdir()
    save_private_key(AgentKey.generate(), state / "agent.key")
    (state / "spool.db").write_bytes(b"this is not an SQLite database at all" * 200)
    cfg = _config(tmp_path, state)
    res = run_cli("run", "--config", str(cfg))
    assert res.returncode == 1 and "file is not a database" in res.stderr
    assert run_cli("status", "--config", str(cfg), "--json").returncode == 1


def test_corrupt_page_inside_spool(tmp_path: Path) -> None:
    state, _key, spool = spooled_state(tmp_path, 40, step=1)
    spool.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    spool.close()
    data = bytearray((state / "spool.db").read_bytes())
    page = 4096
    data[2 * page + 8: 3 * page] = b"\xa5" * (page - 8)  # scribble over a b-tree page
    (state / "spool.db").write_bytes(bytes(data))
    res = run_cli("run", "--config", str(_config(tmp_path, state)))
    assert res.returncode == 1
    assert "event=startup_failed" in res.stderr and "spool.db is corrupt" in res.stderr


def test_a_lost_spool_never_restarts_a_key_that_signed_at_seq_1(tmp_path: Path, in_process,
                                                                 fake_registry: None) -> None:
    """spool.db deleted (as "corrupt") with agent.key kept: a new chain would sign seq 1, 2, ...
    again under the same key, a fork the collector quarantines (§3.3). Found by a review."""
    service, cfg = in_process(interval=60)
    state = service.config.agent.state_dir
    service.poll_job()
    assert service.fatal is None and service.spool.head(service.key.kid).seq == 1
    service.spool.close()
    for name in ("spool.db", "spool.db-wal", "spool.db-shm"):
        (state / name).unlink(missing_ok=True)
    res = run_cli("run", "--config", str(cfg))
    assert res.returncode == 1 and "event=startup_failed" in res.stderr
    assert f"holds no chain for key {service.key.kid}, which has signed heartbeats before" in res.stderr
    assert "enrol a new key" in res.stderr
    assert not (state / "spool.db").exists()  # left empty, it made the agent look new to `status`
    res = run_cli("status", "--config", str(cfg), "--json")
    assert res.returncode == 1
    assert "which has signed heartbeats before" in json.loads(res.stdout)["chain_error"]
    service.spool = Spool(state / "spool.db")  # for the fixture to close


def test_an_older_copy_of_the_spool_is_refused(tmp_path: Path) -> None:
    """Restoring last night's spool.db: the seqs signed since would be signed again with other
    payloads, forks (§3.3). The agent's own advice for a lost spool was to restore it. Found by a
    review."""
    state, key, spool = spooled_state(tmp_path, 3)
    spool.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    backup = (state / "spool.db").read_bytes()
    polls = [{"adapter": "lab", "platform": "kvm", "ok": True, "error": None}]
    for i in range(3, 7):
        spool.append(key, 1_790_000_000 + 60 * i, 60, polls, [])
    assert signedkeys.heads(state) == {key.kid: 7}
    spool.close()
    for name in ("spool.db-wal", "spool.db-shm"):
        (state / name).unlink(missing_ok=True)
    (state / "spool.db").write_bytes(backup)
    res = run_cli("run", "--config", str(_config(tmp_path, state)))
    assert res.returncode == 1 and "event=startup_failed" in res.stderr
    assert f"holds the chain of key {key.kid} up to seq 3, but seq 7 was signed here" in res.stderr
    assert "would sign seqs 4 to 7 again" in res.stderr and "enrol a new key" in res.stderr
    status = run_cli("status", "--config", str(_config(tmp_path, state)), "--json")
    assert status.returncode == 1 and "but seq 7 was signed here" in json.loads(status.stdout)["chain_error"]
    assert Spool(state / "spool.db").head(key.kid).seq == 3  # nothing signed


def test_the_record_of_signed_heads_survives_a_cut_line_and_compacts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kid = "ab" * 16
    for seq in range(1, 6):
        signedkeys.signed(tmp_path, kid, seq)
    with (tmp_path / signedkeys.HEADS).open("a") as f:
        f.write(f"{kid} 1")  # a crash cut the line for seq 12 short: its prefix is never higher
    assert signedkeys.heads(tmp_path) == {kid: 5}
    signedkeys.signed(tmp_path, kid, 6)  # on a line of its own, not joined to the cut one
    assert signedkeys.heads(tmp_path) == {kid: 6}
    monkeypatch.setattr(signedkeys, "COMPACT_BYTES", 200)
    for seq in range(7, 20):
        signedkeys.signed(tmp_path, kid, seq)
    assert (tmp_path / signedkeys.HEADS).stat().st_size <= 200 + 40
    assert signedkeys.heads(tmp_path) == {kid: 19}


def test_a_compaction_killed_before_its_rename_leaves_no_file_for_good(tmp_path: Path) -> None:
    """A crash-consistency review: 26 of 300 SIGKILLs during compaction left a
    signed-heads.<pid>.<hex>.tmp of up to 64 kB, which nothing removed. The start removes those of
    dead processes, and only those: a live process may be about to rename its own."""
    state, key, spool = spooled_state(tmp_path, 2)
    spool.close()
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = state / f"{signedkeys.HEADS}.{dead.pid}.0badf00d.tmp"
    live = state / f"{signedkeys.HEADS}.{os.getppid()}.0badf00d.tmp"
    other = state / f"{signedkeys.HEADS}.notes.tmp"
    for f in (stale, live, other):
        f.write_text(f"{key.kid} 1\n")
        os.utime(f, (time.time() - 120, time.time() - 120))  # older than a rename takes (DEAD_AGE)
    signedkeys.check(state, key.kid, 2, state / "spool.db")
    assert not stale.exists() and live.exists() and other.exists()
    assert signedkeys.heads(state) == {key.kid: 2}


def test_a_chain_from_before_the_list_is_listed_at_start(tmp_path: Path) -> None:
    """An agent upgraded with a chain under way: its key is listed when the service first starts."""
    state, key, spool = spooled_state(tmp_path, 1)
    spool.close()
    proc = subprocess.Popen([str(AGENT), "run", "--config", str(_config(tmp_path, state))],
                            env=agent_env(), stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(300):
            if key.kid in signedkeys.listed(state):
                break
            time.sleep(0.1)
        assert key.kid in signedkeys.listed(state)
    finally:
        proc.terminate()
        proc.communicate(timeout=60)
