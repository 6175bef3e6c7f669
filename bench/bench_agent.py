"""Agent benchmark: RSS and CPU per poll at 2,000 instances, spool throughput vs raw Ed25519 signing,
spool bytes per heartbeat at 500 instances and what a 30-day outage at 300 s takes.

Run: .venv/bin/python bench/bench_agent.py [--instances 2000] [--seconds 20]
The poll benchmark runs the real `tr7-agent run` against libvirt's test:/// driver through
adapters/kvm.py (falls back to the tests' fake adapter when libvirt is missing) and the tests'
mini collector, and reads the agent's /proc counters.
"""

import argparse
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.spool import Spool  # noqa: E402
from protocol.heartbeat import sign_heartbeat  # noqa: E402
from protocol.keys import AgentKey  # noqa: E402

AGENT = ROOT / ".venv" / "bin" / "tr7-agent"
TICK = os.sysconf("SC_CLK_TCK")


def _obs(n: int) -> list[dict]:
    # Random ids, as in real life: sequential ones would flatter the spool's compression.
    return [{"instance": f"tr7-{uuid.uuid4().hex[:12]}", "adapter": "lab", "vm": str(uuid.uuid4()),
             "host": f"kvm-host-{i % 16:02d}.example.net", "state": "running",
             "capacity": {"bundle": "standard", "bandwidth_mbps": 1000, "vservices": 4}} for i in range(n)]


POLLS = [{"adapter": "lab", "platform": "kvm", "ok": True, "error": None}]


def _proc(pid: int) -> tuple[float, int, int]:
    """(cpu seconds, VmRSS kB, VmHWM kB) of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / TICK
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return cpu, int(status["VmRSS"].split()[0]), int(status["VmHWM"].split()[0])


def _adapter_table(tmp: Path, instances: int) -> tuple[str, str]:
    try:
        import libvirt  # noqa: F401

        spec = importlib.util.spec_from_file_location("nodexml", ROOT / "tests/adapters/libvirt/nodexml.py")
        assert spec and spec.loader
        nodexml = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(nodexml)
        doms = [nodexml.Dom(f"vm{i}", license={"instance": f"tr7-{i:06d}", "bundle": "standard",
                                                "bandwidth_mbps": "1000", "vservices": "4"})
                for i in range(instances)]
        uri = nodexml.write_node(tmp / "node.xml", doms)
        return (f'[[adapters]]\nname = "lab"\nplatform = "kvm"\nuri = "{uri}"\n',
                "adapters/kvm.py on libvirt test:/// driver")
    except (ImportError, FileNotFoundError):
        return (f'[[adapters]]\nname = "lab"\nplatform = "kvm"\ninstances = {instances}\n',
                "tests/agent/fake_adapter.py (libvirt missing)")


def bench_polls(instances: int, seconds: float) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="tr7-bench-"))
    collector = None
    agent = None
    try:
        table, source = _adapter_table(tmp, instances)
        env = dict(os.environ)
        if "instances" in table:
            env["PYTHONPATH"] = str(ROOT / "tests/agent/site")
        collector = subprocess.Popen([
            str(AGENT.parent / "python"), str(ROOT / "tests/agent/mini_collector.py"),
            "--db", str(tmp / "c.db"), "--port-file", str(tmp / "port"),
            "--token", "bench"], cwd=ROOT)
        while not (tmp / "port").exists():
            time.sleep(0.05)
        url = f"http://127.0.0.1:{(tmp / 'port').read_text()}"
        cfg = tmp / "agent.toml"
        cfg.write_text(f'[agent]\ncollector = "{url}"\nstate_dir = "{tmp / "state"}"\ninterval = 1\n'
                       f"allow_short_interval = true\n\n{table}")
        subprocess.run([str(AGENT), "enroll", "--config", str(cfg), "--token", "bench"], env=env, check=True,
                       capture_output=True)
        log = open(tmp / "agent.log", "w+")  # noqa: SIM115
        agent = subprocess.Popen([str(AGENT), "run", "--config", str(cfg)], env=env, stderr=log)

        def beats() -> int:
            return Path(log.name).read_text().count("event=heartbeat ")

        while beats() < 1:
            time.sleep(0.05)
        cpu0, _, _ = _proc(agent.pid)
        n0 = beats()
        time.sleep(seconds)
        cpu1, rss, hwm = _proc(agent.pid)
        n1 = beats()
        polls = n1 - n0
        print(f"[polls] adapter: {source}; {instances} instances, interval 1 s, {seconds:.0f} s measured")
        print(f"[polls] heartbeats signed in the window: {polls}")
        if polls:
            per = (cpu1 - cpu0) / polls * 1000
            print(f"[polls] agent CPU per poll (poll + sign + spool + ship): {per:.0f} ms")
        print(f"[polls] agent RSS now {rss / 1024:.1f} MiB, peak {hwm / 1024:.1f} MiB")
    finally:
        for p in (agent, collector):
            if p is not None:
                p.send_signal(signal.SIGTERM if p is agent else signal.SIGKILL)
                p.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)


def bench_spool(n: int, instances: int) -> None:
    key = AgentKey.generate()
    obs = _obs(instances)
    payload = {"v": 1, "agent": key.kid, "seq": 1, "prev": "0" * 64, "time": "2026-01-01T00:00:00Z",
               "interval": 300, "polls": POLLS, "observations": obs}
    t = time.perf_counter()
    for i in range(n):
        payload["seq"] = i + 1
        sign_heartbeat(key, payload)  # the same validation + encoding + Ed25519 work, no storage
    raw = n / (time.perf_counter() - t)
    signing_input = sign_heartbeat(key, payload).rsplit(".", 1)[0].encode("ascii")
    t = time.perf_counter()
    for _ in range(n):
        key.sign(signing_input)  # Ed25519 alone over the same bytes
    ed = n / (time.perf_counter() - t)
    with tempfile.TemporaryDirectory() as d:
        spool = Spool(Path(d) / "spool.db")
        t = time.perf_counter()
        for i in range(n):
            spool.append(key, 1_790_000_000 + 300 * i, 300, POLLS, obs)
        committed = n / (time.perf_counter() - t)
        spool.close()
    print(f"[spool] {instances} instances a heartbeat, {n} heartbeats, synchronous=FULL on "
          f"{d.rsplit('/', 1)[0]}")
    print(f"[spool] Ed25519 alone: {ed:.0f}/s; sign_heartbeat (validate+encode+Ed25519): {raw:.0f}/s; "
          f"signed and committed: {committed:.0f}/s")
    print(f"[spool] ratio committed/Ed25519 {committed / ed:.3f}; "
          f"committed/sign_heartbeat {committed / raw:.2f}")


def bench_bytes(instances: int, n: int) -> None:
    key = AgentKey.generate()
    obs = _obs(instances)
    with tempfile.TemporaryDirectory() as d:
        spool = Spool(Path(d) / "spool.db")
        spool.append(key, 1_790_000_000, 300, POLLS, obs)
        spool.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        before = spool.size_bytes()
        token_len = sum(len(t) for t in spool.unshipped())
        for i in range(1, n + 1):
            spool.append(key, 1_790_000_000 + 300 * i, 300, POLLS, obs)
        spool.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        per = (spool.size_bytes() - before) / n
        spool.close()
    month = 30 * 24 * 3600 // 300
    print(f"[bytes] {instances} instances: JWS {token_len} bytes, spool {per:.0f} bytes a heartbeat "
          f"(overhead {per / token_len - 1:+.1%})")
    print(f"[bytes] 30-day outage at 300 s = {month} heartbeats = {per * month / 2**20:.0f} MiB of spool")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--instances", type=int, default=2000)
    p.add_argument("--seconds", type=float, default=20)
    args = p.parse_args()
    bench_polls(args.instances, args.seconds)
    bench_spool(300, 10)
    bench_spool(50, 500)
    bench_bytes(500, 100)


if __name__ == "__main__":
    main()
