"""Ingest throughput over HTTP (heartbeats of 50 observations, batches of 500, concurrent clients)
against the raw Ed25519 verification rate measured in the same run, on SQLite and PostgreSQL.

What is compared, all measured in this run on this machine:
- raw: Ed25519 signature checks alone over the same tokens, on 1 core and on all cores (one
  process per core, wall clock): the machine's raw rate.
- ingest: heartbeats accepted per second (wall clock) by a collector with --workers processes,
  posted by --clients concurrent clients running on the same machine; its ratio is printed
  against the raw rate on as many cores as it has workers (the goal, >= 0.5) and, for
  comparison with earlier runs, on 1 core.
- the collector's CPU per heartbeat (its processes only, not the database server's nor the
  clients'), as a multiple of one raw check: the cost that does not depend on what else runs;
  and the clients' CPU per heartbeat, which the raw rate does not have to share its cores with.
Never asserts a time. Usage:
    .venv/bin/python bench/bench_ingest.py [--heartbeats 6000] [--clients 4] [--workers N]
"""

import argparse
import base64
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from collector import db, registry
from collector.pgtemp import PgCluster, new_database
from collector.settings import Settings
from protocol.heartbeat import ZERO_HASH, sign_heartbeat, token_digest, verify_heartbeat
from protocol.keys import AgentKey
from protocol.timefmt import format_time

OBS = 50
BATCH = 500


def make_heartbeats(n: int, n_agents: int) -> tuple[list[AgentKey], list[str]]:
    keys = [AgentKey.generate() for _ in range(n_agents)]
    t0 = int(time.time()) - 20 * 86400
    lines = []
    per = n // n_agents
    for a, key in enumerate(keys):
        prev = ZERO_HASH
        for seq in range(1, per + 1):
            obs = [
                {
                    "instance": f"TR7-{a:02d}-{j:02d}",
                    "adapter": "a",
                    "vm": f"vm-{a}-{j}",
                    "host": "esx1",
                    "state": "running",
                    "capacity": {"bundle": "pro", "bandwidth_mbps": 500, "vservices": 10},
                }
                for j in range(OBS)
            ]
            payload = {
                "v": 1,
                "agent": key.kid,
                "seq": seq,
                "prev": prev,
                "time": format_time(t0 + seq * 60),
                "interval": 60,
                "polls": [{"adapter": "a", "platform": "vmware", "ok": True, "error": None}],
                "observations": obs,
            }
            tok = sign_heartbeat(key, payload)
            prev = token_digest(tok)
            lines.append(tok)
    return keys, lines


def _raw_checks(keys: list[AgentKey], lines: list[str], part: int = 0, parts: int = 1) -> int:
    """Ed25519 signature checks alone (no parsing, no storage) of every parts-th line from part."""
    by_kid = {k.kid: k.public for k in keys}
    kids = [k.kid for k in keys for _ in range(len(lines) // len(keys))]
    n = 0
    for kid, line in list(zip(kids, lines, strict=True))[part::parts]:
        h, p, s = line.split(".")
        by_kid[kid].verify(base64.urlsafe_b64decode(s + "=="), f"{h}.{p}".encode())
        n += 1
    return n


def raw_verify_rate(keys: list[AgentKey], lines: list[str]) -> float:
    """Raw checks per second on one core."""
    t = time.perf_counter()
    n = _raw_checks(keys, lines)
    return n / (time.perf_counter() - t)


_SHARED: tuple[list[AgentKey], list[str]] = ([], [])  # inherited by the forked raw-rate processes


def _raw_part(args: tuple[int, int]) -> int:
    return _raw_checks(*_SHARED, *args)


def raw_verify_rate_cores(keys: list[AgentKey], lines: list[str], procs: int) -> float:
    """Raw checks per second, wall clock, with ``procs`` processes sharing the lines."""
    global _SHARED
    _SHARED = (keys, lines)
    with multiprocessing.get_context("fork").Pool(procs) as pool:
        pool.map(abs, range(procs))  # every process is up before the clock starts
        t = time.perf_counter()
        n = sum(pool.map(_raw_part, [(i, procs) for i in range(procs)], chunksize=1))
        return n / (time.perf_counter() - t)


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU of a process and its children (Linux /proc), None where unavailable."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        total = 0.0
        for p in [pid, *map(int, children)]:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total
    except (OSError, ValueError, IndexError):
        return None


def strict_verify_rate(keys: list[AgentKey], lines: list[str]) -> float:
    """protocol.verify_heartbeat: strict parse, schema and signature (the floor of ingest's CPU)."""
    by_kid = {k.kid: k.public for k in keys}
    t = time.perf_counter()
    for line in lines:
        verify_heartbeat(line, by_kid)
    return len(lines) / (time.perf_counter() - t)


def _port() -> int:
    with socket.socket() as so:
        so.bind(("127.0.0.1", 0))
        return int(so.getsockname()[1])


def run_backend(
    name: str, url: str, tmp: Path, keys: list[AgentKey], lines: list[str], clients: int, workers: int
) -> tuple[float, float | None, float]:
    """(accepted per second, collector CPU s per heartbeat or None, clients' CPU s per heartbeat)."""
    st = Settings(tmp / f"data-{name}", url, "bench")
    engine = st.open()
    for i, k in enumerate(keys):
        db.write_tx(engine, lambda c, k=k, i=i: registry.add_agent(c, "acme", f"a{i}", k.public_b64, 0))
    engine.dispose()
    port = _port()
    log = (tmp / f"{name}.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "collector.cli",
            "serve",
            "--data-dir",
            str(st.data_dir),
            "--db",
            url,
            "--listen",
            f"127.0.0.1:{port}",
            "--workers",
            str(workers),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        batches = ["\n".join(lines[i : i + BATCH]).encode("ascii") for i in range(0, len(lines), BATCH)]

        def post(body: bytes) -> int:
            with httpx.Client(timeout=600) as http:
                r = http.post(base + "/v1/heartbeats", content=body, headers={"Content-Type": "text/plain"})
                r.raise_for_status()
                return sum(x["status"] == "accepted" for x in r.json()["results"])

        cpu0 = _cpu_seconds(proc.pid)
        mine = time.process_time()  # the clients run in this process
        t = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            accepted = sum(pool.map(post, batches))
        elapsed = time.perf_counter() - t
        cpu1 = _cpu_seconds(proc.pid)
        mine = time.process_time() - mine
    finally:
        proc.terminate()
        proc.wait(60)
        log.close()
    if accepted != len(lines):
        print(f"  {name}: only {accepted} of {len(lines)} accepted (see {tmp / name}.log)")
    cpu = None if cpu0 is None or cpu1 is None else (cpu1 - cpu0) / len(lines)
    return len(lines) / elapsed, cpu, mine / len(lines)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--heartbeats", type=int, default=6000)
    ap.add_argument("--agents", type=int, default=12)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tr7-bench-ingest-"))
    cluster = None
    try:
        keys, lines = make_heartbeats(args.heartbeats, args.agents)
        cores = os.cpu_count() or 1
        print(
            f"{len(lines)} heartbeats x {OBS} observations, batches of {BATCH}, {args.clients} clients, "
            f"{args.workers} collector workers, {cores} cores (shared with the clients and the database)"
        )
        raw1 = raw_verify_rate(keys, lines)
        raw_w = raw_verify_rate_cores(keys, lines, args.workers) if args.workers > 1 else raw1
        print(f"raw Ed25519 verification: {raw1:,.0f}/s on 1 core, {raw_w:,.0f}/s on {args.workers} cores")
        strict = strict_verify_rate(keys, lines)
        print(f"protocol.verify_heartbeat (1 core): {strict:,.0f}/s = {strict / raw1:.2f} of raw on 1 core")
        cluster = PgCluster()
        for name, url in (
            ("sqlite", f"sqlite:///{tmp / 'collector.db'}"),
            ("postgresql", new_database(cluster.admin_url)),
        ):
            rate, cpu, client_cpu = run_backend(name, url, tmp, keys, lines, args.clients, args.workers)
            cost = f"; clients' CPU {client_cpu * 1e6:,.0f} us/heartbeat (same cores)"
            if cpu is not None:
                cost = f"; collector CPU {cpu * 1e6:,.0f} us/heartbeat = {cpu * raw1:.1f} x raw" + cost
            print(
                f"ingest over HTTP, {name}: {rate:,.0f}/s = {rate / raw_w:.2f} of raw on {args.workers} "
                f"cores (goal >= 0.5), {rate / raw1:.2f} of raw on 1 core{cost}"
            )
        return 0
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
