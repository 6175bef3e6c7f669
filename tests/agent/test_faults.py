"""Fault test with real processes: kill -9 agents and the collector at random moments, then drain.

Every heartbeat signed must be accepted exactly once; per key, seqs are 1..N with no gap and each
`prev` is the digest of the one before (no fork, no break).
"""

import random
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

from conftest import AGENT, agent_env, enrolled_agent

from agent.config import load_config
from agent.shipper import Shipper
from agent.spool import Spool
from protocol.heartbeat import ZERO_HASH, parse_unverified, token_digest

AGENTS = 4
TARGET = 200  # heartbeats signed in total (each one a poll and a ship cycle)
CHAOS_LIMIT = 140.0  # seconds


def _head(state: Path) -> int:
    try:
        db = sqlite3.connect(f"file:{state / 'spool.db'}?mode=ro", uri=True, timeout=5)
        try:
            row = db.execute("SELECT max(seq) FROM chain").fetchone()
        finally:
            db.close()
        return row[0] or 0
    except sqlite3.Error:
        return 0


def test_kill_9_agents_and_collector_then_drain(tmp_path: Path, make_collector, fake_registry: None) -> None:
    rnd = random.Random()
    seed = rnd.randrange(1 << 30)
    rnd.seed(seed)
    tokens = [f"tok-{i}" for i in range(AGENTS)]
    collector = make_collector(tokens=tokens, extra=["--lose-answers", "0.1"])
    configs = [enrolled_agent(tmp_path, collector, token=t, name=f"ag{i}",
                              adapters=[{"name": "lab", "platform": "kvm", "instances": 1 + i}])
               for i, t in enumerate(tokens)]
    states = [tmp_path / f"state-ag{i}" for i in range(AGENTS)]
    logs = [open(tmp_path / f"agent{i}.log", "ab") for i in range(AGENTS)]  # noqa: SIM115

    def start(i: int) -> subprocess.Popen:
        return subprocess.Popen([str(AGENT), "run", "--config", str(configs[i])], env=agent_env(),
                                stderr=logs[i])

    procs = [start(i) for i in range(AGENTS)]
    kills = {"agent": 0, "collector": 0}
    try:
        t0 = time.monotonic()
        next_collector_kill = t0 + rnd.uniform(4, 10)
        while sum(_head(s) for s in states) < TARGET:
            assert time.monotonic() - t0 < CHAOS_LIMIT, f"too slow (seed {seed})"
            time.sleep(rnd.uniform(0.3, 2.5))
            i = rnd.randrange(AGENTS)
            procs[i].send_signal(signal.SIGKILL)
            procs[i].wait()
            kills["agent"] += 1
            procs[i] = start(i)
            if time.monotonic() > next_collector_kill:
                collector.kill()
                kills["collector"] += 1
                time.sleep(rnd.uniform(0.0, 2.0))
                collector.start()
                next_collector_kill = time.monotonic() + rnd.uniform(4, 10)
        for p in procs:
            p.send_signal(signal.SIGKILL)
            p.wait()
    finally:
        for p in procs:
            p.kill()
        for f in logs:
            f.close()
    assert kills["agent"] >= 20 and kills["collector"] >= 3, kills

    # Drain what is left with the agent's own shipper code.
    total = 0
    for cfg, state in zip(configs, states, strict=True):
        spool = Spool(state / "spool.db")
        shipper = Shipper(load_config(cfg).agent, spool)
        deadline = time.monotonic() + 60
        while (delay := shipper.ship_once()) is not None:
            assert time.monotonic() < deadline, "drain did not finish"
            time.sleep(min(delay, 1.0))
        kid = spool.db.execute("SELECT kid FROM chain").fetchone()[0]
        n = spool.head(kid).seq
        assert spool.stats()["rejected"]["count"] == 0
        spool.close()
        rows = collector.query("SELECT seq, prev, token, digest FROM heartbeats WHERE kid = ? "
                               "ORDER BY seq", kid)
        assert [r[0] for r in rows] == list(range(1, n + 1)), f"gap, fork or loss for {kid} (seed {seed})"
        prev = ZERO_HASH
        for seq, p, token, digest in rows:
            assert p == prev == parse_unverified(token).prev, f"break at seq {seq} (seed {seed})"
            prev = digest
            assert digest == token_digest(token)
        total += n
    # Accepted exactly once: the other receipts of the same line were answered duplicate.
    accepted_twice = collector.query(
        "SELECT digest FROM received WHERE status = 'accepted' GROUP BY digest HAVING count(*) > 1")
    assert accepted_twice == []
    assert collector.query("SELECT count(*) FROM received WHERE status = 'rejected'") == [(0,)]
    assert collector.query("SELECT count(*) FROM heartbeats") == [(total,)]
    assert total >= TARGET
    assert collector.query("SELECT count(*) FROM received WHERE status = 'duplicate'")[0][0] > 0
    print(f"seed {seed}: {total} heartbeats, {kills['agent']} agent kills, {kills['collector']} collector "
          f"kills, {collector.query('SELECT count(*) FROM received WHERE status = ?', 'duplicate')[0][0]} "
          "duplicates answered")
