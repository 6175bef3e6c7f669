"""Crash consistency of the spool: one transaction allocates seq, signs and inserts."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import ROOT, run_cli, spooled_state, write_config

from agent.spool import Spool
from agent.spooltypes import ClockBehind, Row
from protocol.errors import ProtocolError
from protocol.heartbeat import ZERO_HASH, parse_unverified, token_digest
from protocol.keys import AgentKey, save_private_key

POLLS = [{"adapter": "lab", "platform": "kvm", "ok": True, "error": None}]
T0 = 1_790_000_000


class Crash(Exception):
    pass


def _chain_ok(tokens: list[str]) -> list[int]:
    """Assert the tokens form one unbroken chain from seq 1; return the seqs."""
    prev = ZERO_HASH
    seqs = []
    for i, tok in enumerate(tokens, 1):
        hb = parse_unverified(tok)
        assert hb.seq == i and hb.prev == prev, f"chain broken at {i}"
        prev = token_digest(tok)
        seqs.append(hb.seq)
    return seqs


@pytest.mark.parametrize("stage", ["allocated", "signed", "inserted"])
def test_exception_inside_transaction_reuses_nothing_skips_nothing(tmp_path: Path, stage: str) -> None:
    key = AgentKey.generate()
    spool = Spool(tmp_path / "spool.db")
    spool.append(key, T0, 60, POLLS, [])

    def boom(s: str) -> None:
        if s == stage:
            raise Crash(s)

    spool.fault = boom
    with pytest.raises(Crash):
        spool.append(key, T0 + 60, 60, POLLS, [])
    spool.fault = None
    assert spool.head(key.kid).seq == 1
    spool.append(key, T0 + 120, 60, POLLS, [])
    spool.close()
    again = Spool(tmp_path / "spool.db")
    assert _chain_ok(list(again.unshipped())) == [1, 2]


CRASHER = """
import os, sys
from pathlib import Path
from agent.spool import Spool
from protocol.keys import load_private_key
key = load_private_key(Path(sys.argv[1]))
spool = Spool(Path(sys.argv[2]))
stage, at = sys.argv[3], int(sys.argv[4])
polls = [{"adapter": "lab", "platform": "kvm", "ok": True, "error": None}]
for n in range(5):
    spool.fault = (lambda s: os._exit(9) if s == stage else None) if n == at else None
    spool.append(key, 1_790_000_000 + 60 * (spool.head(key.kid).seq + 1), 60, polls, [])
"""


@pytest.mark.parametrize("stage", ["allocated", "signed", "inserted"])
def test_process_killed_inside_transaction(tmp_path: Path, stage: str) -> None:
    """A real crash (os._exit: no rollback, no cleanup) at each point of the transaction."""
    key = AgentKey.generate()
    save_private_key(key, tmp_path / "agent.key")
    for at in (0, 2):
        res = subprocess.run([sys.executable, "-c", textwrap.dedent(CRASHER), str(tmp_path / "agent.key"),
                              str(tmp_path / "spool.db"), stage, str(at)], cwd=ROOT, capture_output=True)
        assert res.returncode == 9, res.stderr
    spool = Spool(tmp_path / "spool.db")
    tokens = list(spool.unshipped())
    # First run dies at its 1st append (0 committed), second at its 3rd (2 committed).
    assert _chain_ok(tokens) == [1, 2]
    assert spool.head(key.kid).seq == 2 and spool.head(key.kid).digest == token_digest(tokens[-1])


def test_head_survives_shipping(tmp_path: Path) -> None:
    """Shipped rows are deleted; the head is kept apart, so the chain continues after a full drain."""
    key = AgentKey.generate()
    spool = Spool(tmp_path / "spool.db")
    for i in range(3):
        spool.append(key, T0 + 60 * i, 60, POLLS, [])
    rows = spool.batch()
    spool.settle([(r, "accepted", None) for r in rows])
    assert spool.batch() == []
    seq, token = spool.append(key, T0 + 180, 60, POLLS, [])
    assert seq == 4 and parse_unverified(token).prev == token_digest(rows[-1].token)


def test_clock_behind_signs_nothing(tmp_path: Path) -> None:
    key = AgentKey.generate()
    spool = Spool(tmp_path / "spool.db")
    spool.append(key, T0, 60, POLLS, [])
    for when in (T0 - 60, T0):
        with pytest.raises(ClockBehind):
            spool.append(key, when, 60, POLLS, [])
    assert spool.head(key.kid).seq == 1
    # asked for (a slot far behind a heartbeat signed while the clock was ahead): signed, chained
    seq, _ = spool.append(key, T0 - 86400, 60, POLLS, [], back=True)
    assert seq == 2 and spool.head(key.kid).time == T0 - 86400


def test_settle_sets_rejected_aside(tmp_path: Path) -> None:
    key = AgentKey.generate()
    spool = Spool(tmp_path / "spool.db")
    for i in range(3):
        spool.append(key, T0 + 60 * i, 60, POLLS, [])
    rows = spool.batch()
    spool.settle([(rows[0], "accepted", None), (rows[1], "rejected", "kid.unknown: x"),
                  (rows[2], "duplicate", None)])
    stats = spool.stats()
    assert stats["spool_depth"] == 0 and stats["last_shipped_seq"] == 3
    assert stats["rejected"] == {"count": 1, "reasons": {"kid.unknown: x": 1}}


def test_batch_respects_byte_limit(tmp_path: Path) -> None:
    key = AgentKey.generate()
    spool = Spool(tmp_path / "spool.db")
    for i in range(5):
        spool.append(key, T0 + 60 * i, 60, POLLS, [])
    size = len(spool.batch()[0].token) + 1
    rows = spool.batch(max_bytes=2 * size)
    assert [r.seq for r in rows] == [1, 2] and all(isinstance(r, Row) for r in rows)
    assert [r.seq for r in spool.batch(limit=3)] == [1, 2, 3]


def _damage(spool: Spool, seq: int) -> None:
    """Flip a byte in the middle of a row's compressed heartbeat (bit rot quick_check misses)."""
    (blob,) = spool.db.execute("SELECT jws_z FROM spool WHERE seq = ?", (seq,)).fetchone()
    b = bytearray(blob)
    b[len(b) // 2] ^= 0xFF
    spool.db.execute("UPDATE spool SET jws_z = ? WHERE seq = ?", (bytes(b), seq))


def test_a_damaged_row_is_set_aside_and_shipping_goes_on(tmp_path: Path) -> None:
    """One unreadable row stopped the shipper, and the agent at every start, for good."""
    key = AgentKey.generate()
    spool = Spool(tmp_path / "spool.db")
    for i in range(4):
        spool.append(key, T0 + 60 * i, 60, POLLS, [])
    _damage(spool, 2)
    assert len(list(spool.unshipped())) == 3 and spool.damaged == [2]  # read-only: nothing moved
    assert spool.stats()["spool_depth"] == 4
    assert [r.seq for r in spool.batch()] == [1, 3, 4]
    stats = spool.stats()
    assert stats["spool_depth"] == 3 and stats["rejected"]["count"] == 1
    [reason] = stats["rejected"]["reasons"]
    assert reason.startswith("spool.damaged: the stored heartbeat cannot be read")
    assert spool.head(key.kid).seq == 4  # the chain goes on from its head, not from the rows


def test_export_names_the_damaged_rows_and_exits_1(tmp_path: Path) -> None:
    state, _key, spool = spooled_state(tmp_path, 3)
    _damage(spool, 3)
    spool.close()
    cfg = write_config(tmp_path / "a.toml", {"state_dir": str(state)}, [{"name": "l", "platform": "kvm"}])
    res = run_cli("export", "--config", str(cfg), "--out", str(tmp_path / "out.jws"))
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "1 damaged rows could not be read" in res.stderr and "(seq 3)" in res.stderr
    assert len((tmp_path / "out.jws").read_text().splitlines()) == 2


def test_a_heartbeat_over_16_mib_is_refused_before_it_is_stored(tmp_path: Path) -> None:
    """No collector may take it (§4): it blocked the spool for good, retried after every 413."""
    key = AgentKey.generate()
    spool = Spool(tmp_path / "spool.db")
    obs = [{"instance": f"TR7-{i:06d}", "adapter": "lab", "vm": "v" * 200, "host": "h" * 100,
            "state": "running", "capacity": None} for i in range(60_000)]
    with pytest.raises(ProtocolError, match=r"heartbeat-v1\.md §4 takes at most"):
        spool.append(key, T0, 60, POLLS, obs)
    assert spool.head(key.kid).seq == 0 and spool.stats()["spool_depth"] == 0


def test_the_spool_size_falls_once_its_backlog_ships(tmp_path: Path) -> None:
    """`spool_bytes` (and the spool_limit_mb alarm on it) is the live data: it read the files, which
    never shrink, so the alarm stayed on after an outage's backlog had shipped. Found by a review."""
    _state, key, spool = spooled_state(tmp_path, 1)
    obs = [{"instance": f"TR7-{i:04d}", "adapter": "lab", "vm": f"vm-{i}", "host": "h", "state": "running",
            "capacity": None} for i in range(200)]
    polls = [{"adapter": "lab", "platform": "kvm", "ok": True, "error": None}]
    for i in range(1, 400):
        spool.append(key, 1_790_000_000 + 60 * i, 60, polls, obs)
    backlog = spool.stats()["spool_bytes"]
    assert backlog > 500_000
    while rows := spool.batch(limit=50):
        spool.settle([(r, "accepted", None) for r in rows])
    stats = spool.stats()
    assert stats["spool_depth"] == 0 and stats["spool_bytes"] < backlog / 10
    spool.close()


def _backlog(spool: Spool, key: AgentKey, n: int = 400) -> None:
    obs = [{"instance": f"TR7-{i:04d}", "adapter": "lab", "vm": f"vm-{i}", "host": "h", "state": "running",
            "capacity": None} for i in range(200)]
    for i in range(1, n):
        spool.append(key, T0 + 60 * i, 60, POLLS, obs)


def _file_size(spool: Spool) -> int:
    spool.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return spool.path.stat().st_size


def test_the_spool_files_shrink_once_a_backlog_ships(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The files kept an outage's size for good: a disk that a week of spool had filled stayed full
    after the backlog shipped. The pages of shipped rows now go back to the file system."""
    import agent.spoolspace as space_mod

    monkeypatch.setattr(space_mod, "RECLAIM_PAGES", 16)  # this backlog is ~220 pages, not a week's
    _state, key, spool = spooled_state(tmp_path, 1)
    assert spool.db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental, from the start
    _backlog(spool, key)
    full = _file_size(spool)
    assert full > 500_000
    while rows := spool.batch(limit=50):
        spool.settle([(r, "accepted", None) for r in rows])
    assert _file_size(spool) < full / 5
    assert spool.head(key.kid).seq == 400  # the chain head is kept, and signing goes on from it
    spool.append(key, T0 + 60 * 400, 60, POLLS, [])
    assert spool.head(key.kid).seq == 401
    spool.close()


def test_an_older_spool_takes_incremental_vacuum_when_small_and_not_in_a_backlog(tmp_path: Path) -> None:
    """A spool.db made before: converted by one VACUUM at open while small, its rows kept; in the middle
    of a backlog (over CONVERT_BELOW) left for a later start."""
    import agent.spoolspace as space_mod

    _state, key, spool = spooled_state(tmp_path, 1)
    path = spool.path
    _backlog(spool, key, 40)
    spool.db.execute("PRAGMA auto_vacuum=NONE")
    spool.db.execute("VACUUM")  # as the agent made it before 2026-12-06
    assert spool.db.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    spool.close()
    low, space_mod.CONVERT_BELOW = space_mod.CONVERT_BELOW, 1000
    try:
        again = Spool(path)
        assert again.db.execute("PRAGMA auto_vacuum").fetchone()[0] == 0  # a backlog: later
        again.close()
    finally:
        space_mod.CONVERT_BELOW = low
    again = Spool(path)
    assert again.db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
    assert [parse_unverified(t).seq for t in again.unshipped()] == list(range(1, 41))
    assert again.head(key.kid).seq == 40
    again.close()


def test_a_spool_the_agent_cannot_write_is_refused_when_opened(tmp_path: Path) -> None:
    """spool.db left root's by a hand-run `tr7-agent run`: SQLite opened it read-only without a
    word, and the service said ready, then died at its first poll, again and again. Found by a
    review."""
    import os

    state, _key, spool = spooled_state(tmp_path, 1)
    spool.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    spool.close()
    db = state / "spool.db"
    run = [sys.executable]
    if os.geteuid() == 0:
        # root writes anything; without its capabilities (util-linux's setpriv) it is held to the
        # file's mode as the service's user is, and the file is another user's
        os.chown(db, 65534, 65534)
        run = ["setpriv", "--bounding-set=-all", "--inh-caps=-all", sys.executable]
    db.chmod(0o444)
    code = ("from pathlib import Path\nfrom agent.spool import Spool\n"
            "from agent.spooltypes import SpoolError\n"
            f"try:\n    Spool(Path({str(db)!r}))\nexcept SpoolError as exc:\n    print(exc)\n")
    res = subprocess.run([*run, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "cannot write it (its owner or mode" in res.stdout, res.stdout + res.stderr
    assert "attempt to write a readonly database" in res.stdout
