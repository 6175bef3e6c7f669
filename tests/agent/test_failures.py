"""Loud failures: disk full, unwritable state dir, corrupt spool, missing key. Never healthy-but-idle."""

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import AGENT, agent_env, run_cli, spooled_state, write_config

from agent import signedkeys
from agent.spool import Spool
from protocol.heartbeat import ZERO_HASH, parse_unverified, token_digest
from protocol.keys import AgentKey, save_private_key


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[Callable[[str, str], Path]]:
    mounted: list[Path] = []

    def do(name: str, options: str) -> Path:
        d = tmp_path / name
        d.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(d)], check=True)
        mounted.append(d)
        return d

    yield do
    for d in mounted:
        subprocess.run(["umount", "-l", str(d)], check=False)


def _config(tmp_path: Path, state: Path, instances: int = 3) -> Path:
    # No collector: nothing ships, so the spool only grows.
    return write_config(tmp_path / "agent.toml",
                        {"state_dir": str(state), "interval": 1, "allow_short_interval": True},
                        [{"name": "lab", "platform": "kvm", "instances": instances}])


def test_disk_full_stops_loudly_and_loses_nothing(tmp_path: Path, mount) -> None:
    state = mount("state", "size=512k,mode=0700")
    save_private_key(AgentKey.generate(), state / "agent.key")
    cfg = _config(tmp_path, state, instances=300)  # ~70 kB a heartbeat: full after a few polls
    res = run_cli("run", "--config", str(cfg), timeout=120)
    assert res.returncode == 1, res.stderr[-2000:]
    assert "event=fatal" in res.stderr and "disk is full" in res.stderr
    logged = [int(line.split("seq=")[1].split()[0]) for line in res.stderr.splitlines()
              if "event=heartbeat " in line]
    assert logged, "some heartbeats were committed before the disk filled"
    spool = Spool(state / "spool.db", readonly=True)  # in place, on the still-full file system
    tokens = list(spool.unshipped())
    head = spool.db.execute("SELECT seq, digest FROM chain").fetchone()
    spool.close()
    prev = ZERO_HASH
    for i, tok in enumerate(tokens, 1):
        hb = parse_unverified(tok)
        assert (hb.seq, hb.prev) == (i, prev)
        prev = token_digest(tok)
    # Every heartbeat reported as committed is still there, and the head is the last of them.
    assert len(tokens) == max(logged) and head == (len(tokens), prev)


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
