"""A site without a path to the collector: `key`, `export`, `tr7-collector import --results`, `settle`."""

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from conftest import AGENT, ROOT, agent_env, run_cli, write_config

from agent.spool import Spool
from protocol.heartbeat import parse_unverified, token_digest

COLLECTOR = ROOT / ".venv" / "bin" / "tr7-collector"
sys.path.insert(0, str(ROOT))
from tests._seed import catalog  # noqa: E402


def _collector(data: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(COLLECTOR), *args, "--data-dir", str(data)], capture_output=True, text=True,
                          timeout=120, check=False)


def _run_agent(cfg: Path, state: Path, heartbeats: int) -> None:
    """`tr7-agent run` until the spool holds ``heartbeats`` more rows (nothing ships: no collector)."""
    before = _depth(state)
    proc = subprocess.Popen([str(AGENT), "run", "--config", str(cfg)], env=agent_env(),
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while _depth(state) < before + heartbeats:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(60)


def _depth(state: Path) -> int:
    if not (state / "spool.db").exists():
        return 0
    spool = Spool(state / "spool.db", readonly=True)
    try:
        return int(spool.stats()["spool_depth"])
    except sqlite3.OperationalError:  # the agent has made the file, not yet its tables
        return 0
    finally:
        spool.close()


def test_an_air_gapped_agent_registers_its_key_and_empties_its_spool_by_file(tmp_path: Path) -> None:
    state, data = tmp_path / "state", tmp_path / "collector"
    cfg = write_config(tmp_path / "agent.toml", {"state_dir": str(state), "name": "vault", "interval": 1,
                                                 "allow_short_interval": True},
                       [{"name": "lab", "platform": "kvm", "instances": 1, "prefix": "TR7-"}])
    res = run_cli("key", "--config", str(cfg))
    assert res.returncode == 0, res.stderr
    public = res.stdout.split("public_key")[1].split()[0]
    assert f"tr7-collector agent add --provider PROVIDER --name vault --public-key {public}" in res.stdout
    (tmp_path / "catalog.json").write_text(json.dumps(catalog()))
    assert _collector(data, "apply", str(tmp_path / "catalog.json")).returncode == 0
    added = _collector(data, "agent", "add", "--provider", "acme", "--name", "vault", "--public-key", public,
                       "--enrolled-at", "2026-01-01T00:00:00Z")
    assert added.returncode == 0, added.stderr

    _run_agent(cfg, state, 2)
    first = tmp_path / "first.jws"
    assert run_cli("export", "--config", str(cfg), "--out", str(first)).returncode == 0
    carried = first.read_text().splitlines()
    _run_agent(cfg, state, 1)  # signed after the export: not in what the collector gets
    results = tmp_path / "results.jsonl"
    imported = _collector(data, "import", str(first), "--results", str(results))
    assert imported.returncode == 0, imported.stderr
    assert json.loads(imported.stdout) == {"accepted": len(carried), "duplicate": 0, "rejected": 0}

    settled = run_cli("settle", "--config", str(cfg), "--results", str(results))
    assert settled.returncode == 0, settled.stderr
    left = json.loads(settled.stdout)["still_unshipped"]
    assert json.loads(settled.stdout) == {"stored": len(carried), "rejected": 0, "still_unshipped": left}
    status = json.loads(run_cli("status", "--config", str(cfg), "--json").stdout)
    assert status["spool_depth"] == left >= 1 and status["last_shipped_seq"] == len(carried)
    second = tmp_path / "second.jws"
    assert run_cli("export", "--config", str(cfg), "--out", str(second)).returncode == 0
    seqs = [parse_unverified(t).seq for t in second.read_text().splitlines()]
    assert seqs and min(seqs) == len(carried) + 1  # each export carries only what is not yet stored


def _two_heartbeats(tmp_path: Path) -> Path:
    """The configuration of an agent with a key and two heartbeats in its spool."""
    state = tmp_path / "state"
    cfg = write_config(tmp_path / "agent.toml", {"state_dir": str(state), "interval": 1,
                                                 "allow_short_interval": True},
                       [{"name": "lab", "platform": "kvm", "instances": 1}])
    assert run_cli("key", "--config", str(cfg)).returncode == 0
    _run_agent(cfg, state, 2)
    return cfg


def test_settle_sets_aside_what_the_collector_rejected_and_refuses_a_foreign_file(tmp_path: Path) -> None:
    cfg = _two_heartbeats(tmp_path)
    out = tmp_path / "x.jws"
    assert run_cli("export", "--config", str(cfg), "--out", str(out)).returncode == 0
    token = out.read_text().splitlines()[0]
    results = tmp_path / "r.jsonl"
    results.write_text(json.dumps({"digest": token_digest(token), "status": "rejected", "seq": 1,
                                   "reason": "key.window: before the key's enrolment"}) + "\n")
    settled = run_cli("settle", "--config", str(cfg), "--results", str(results))
    assert json.loads(settled.stdout)["rejected"] == 1
    status = json.loads(run_cli("status", "--config", str(cfg), "--json").stdout)
    assert status["rejected"]["count"] == 1 and "key.window" in json.dumps(status["rejected"]["reasons"])
    (tmp_path / "bad.jsonl").write_text('{"accepted": 3}\n')
    bad = run_cli("settle", "--config", str(cfg), "--results", str(tmp_path / "bad.jsonl"))
    assert bad.returncode == 1 and "is not a result of `tr7-collector import --results`" in bad.stderr


def test_settle_reads_the_spool_a_page_at_a_time(tmp_path: Path, monkeypatch) -> None:
    """A month of 500 instances at 300 s held 1.2 GB while settled (the whole spool read at once):
    now SETTLE_ROWS rows at a time, each page settled as it is read. Found by a review."""
    from agent import offline
    from agent.config import load_config
    from protocol.keys import AgentKey, save_private_key

    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    key = AgentKey.generate()
    save_private_key(key, state / "agent.key")
    spool = Spool(state / "spool.db")
    polls = [{"adapter": "lab", "platform": "kvm", "ok": True, "error": None}]
    tokens = [spool.append(key, 1_790_000_000 + 60 * i, 60, polls, [])[1] for i in range(11)]
    # seqs 4-6, a whole page, cannot be read (a bad sector): settle read on past them (it stopped)
    spool.db.execute("UPDATE spool SET jws_z = x'00' WHERE seq BETWEEN 4 AND 6")
    spool.close()
    answers = [("accepted", None), ("duplicate", None), ("rejected", "payload.time: no")]
    results = tmp_path / "r.jsonl"
    lines = [{"digest": token_digest(t), "status": answers[i % 3][0], "reason": answers[i % 3][1]}
             for i, t in enumerate(tokens) if i % 4 != 3]  # seqs 4, 8: not in the file
    results.write_text("".join(json.dumps(x) + "\n" for x in lines))
    cfg = write_config(tmp_path / "agent.toml", {"state_dir": str(state)},
                       [{"name": "lab", "platform": "kvm", "uri": "test:///default"}])
    monkeypatch.setattr(offline, "SETTLE_ROWS", 3)  # pages end inside and across the answers
    pages: list[int] = []
    read = Spool.batch
    monkeypatch.setattr(Spool, "batch", lambda self, *a, **k: pages.append(len(rows := read(self, *a, **k)))
                        or rows)
    assert offline.settle(load_config(cfg), results) == 0
    assert pages == [3, 0, 3, 2, 0]  # the spool is never held whole
    sent = [i for i in range(11) if i % 4 != 3]
    rejected = sorted({i for i in sent if i % 3 == 2} | {3, 4, 5})  # and the damaged, set aside
    spool = Spool(state / "spool.db", readonly=True)
    try:
        left = [parse_unverified(t).seq for t in spool.unshipped()]
        assert left == [8]  # only what the collector did not answer stays (4 is damaged)
        assert [r[2] for r in spool.rejected_rows()] == [i + 1 for i in rejected]
    finally:
        spool.close()


def test_key_prints_a_command_line_the_shell_takes_as_it_is(tmp_path: Path) -> None:
    import shlex

    cfg = write_config(tmp_path / "agent.toml",
                       {"state_dir": str(tmp_path / "state"), "name": "Lab agent (rack 4)"},
                       [{"name": "lab", "platform": "kvm", "instances": 1}])
    res = run_cli("key", "--config", str(cfg))
    assert res.returncode == 0, res.stderr
    line = next(x for x in res.stdout.splitlines() if "tr7-collector agent add" in x)
    args = shlex.split(line)  # the name was printed bare: a syntax error in bash
    assert args[args.index("--name") + 1] == "Lab agent (rack 4)"


def test_export_writes_through_a_link_or_device_and_never_replaces_it(tmp_path: Path) -> None:
    """`export --out /dev/null` (or `/dev/stdout`) renamed its temporary file over the device, as
    root, for every program until a reboot. Found by a review."""
    import os
    import stat

    cfg = _two_heartbeats(tmp_path)
    target = tmp_path / "real.jws"
    target.write_text("")
    link = tmp_path / "link.jws"
    link.symlink_to(target)
    res = run_cli("export", "--config", str(cfg), "--out", str(link))
    assert res.returncode == 0, res.stderr
    assert link.is_symlink() and len(target.read_text().splitlines()) >= 2
    assert not (tmp_path / "link.jws.tmp").exists()
    if os.geteuid() == 0:  # a device node needs root to make: the same as /dev/null
        null = tmp_path / "null"
        os.mknod(null, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        res = run_cli("export", "--config", str(cfg), "--out", str(null))
        assert res.returncode == 0, res.stderr
        assert stat.S_ISCHR(null.lstat().st_mode)
    # a failed export leaves no FILE.tmp behind
    res = run_cli("export", "--config", str(cfg), "--out", str(tmp_path / "nodir" / "x.jws"))
    assert res.returncode == 1 and "cannot write" in res.stderr
    assert not (tmp_path / "nodir").exists()
