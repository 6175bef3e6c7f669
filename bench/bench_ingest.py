"""Ingest throughput over HTTP (heartbeats of 50 observations, batches of 500, concurrent clients)
against the raw Ed25519 verification rate measured in the same run, on SQLite and PostgreSQL.

What is compared, all measured in this run on this machine:
- raw: Ed25519 signature checks alone over the same tokens, on 1 core and on all the machine's
  cores (one process per core, wall clock): the machine's raw rate. Each
  process splits, decodes and encodes its share before the clock starts, the processes start
  together, and only the verify loop is timed (at least RAW_CHECKS checks a process).
- ingest: heartbeats accepted per second (wall clock) by a collector with --workers processes
  (by default one more than the cores, as docs/collector.md advises: a worker waiting on the
  database's lock or its fsync leaves its core to the others), posted by --clients concurrent
  clients running on the same machine, for two workloads (--workloads):
  steady (each agent's consecutive heartbeats carry byte-identical observations, as real
  agents send) and varying (every heartbeat's observations differ); its ratio is printed
  against the raw rate on the collector's cores (the goal, >= 0.5: against the higher of two
  readings of it, just before and just after the run) and, for comparison, on 1 core.
  In two layouts (--layouts): shared, the collector, the clients and the database on all the
  cores, as on one small machine; apart, the collector alone on all the cores but one, the
  clients and PostgreSQL's processes pinned to that one (CPU affinity), as where PostgreSQL has
  its own host (docs/collector.md's set-up for several collectors) and the agents are remote,
  compared with the raw rate on as many cores as the collector has. SQLite runs in the
  collector's processes in both.
- the collector's CPU per heartbeat (its processes only, not the database server's nor the
  clients'), as a multiple of one raw check: the cost that does not depend on what else runs;
  and, on the same cores but not the raw rate's, the clients' CPU per heartbeat (one client
  made before the clock, a new connection per batch) and PostgreSQL's (its postmaster and
  backends).
- per run, how busy its cores were (the rate times the CPU a heartbeat of every process on them)
  and the highest ratio those costs allow with them 100% busy: under the goal with the cores
  near 100%, a heartbeat costs too much; with them idle, the schedule or a lock is to blame.
Both databases are durable, as the collector promises before its 200: SQLite with
synchronous=FULL, the throwaway PostgreSQL with fsync on.
Never asserts a time. Usage:
    .venv/bin/python bench/bench_ingest.py [--heartbeats 24000] [--clients 4] [--workers N]
        [--backends sqlite,postgresql] [--layouts shared,apart] [--workloads steady,varying]
        [--repeat 1]
"""

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from collector import credentials, db
from collector.pgtemp import PgCluster, new_database
from collector.settings import Settings
from protocol.keys import AgentKey

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _ingestload import (
    BATCH,
    OBS,
    ceiling,
    cpu_seconds,
    make_heartbeats,
    pin_tree,
    raw_verify_rate,
    raw_verify_rate_cores,
    strict_verify_rate,
)


def _port() -> int:
    with socket.socket() as so:
        so.bind(("127.0.0.1", 0))
        return int(so.getsockname()[1])


def run_backend(
    name: str, url: str, tmp: Path, keys: list[AgentKey], lines: list[str], clients: int, workers: int,
    db_pid: int | None = None, collector_cpus: set[int] | None = None,
) -> tuple[float, float | None, float, float | None]:
    """(accepted per second, collector CPU s per heartbeat or None, clients' CPU s per heartbeat,
    the database server's CPU s per heartbeat or None: PostgreSQL's postmaster and backends).
    ``collector_cpus``: the CPUs the collector's processes run on (inherited by its workers), all
    of them when None."""
    st = Settings(tmp / f"data-{name}", url, "bench")
    engine = st.open()
    for i, k in enumerate(keys):
        db.write_tx(engine, lambda c, k=k, i=i: credentials.add_agent(c, "acme", f"a{i}", k.public_b64, 0))
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
        # set in the child before the exec: the workers it spawns inherit it
        preexec_fn=None if collector_cpus is None else lambda: os.sched_setaffinity(0, collector_cpus),
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

        # One client, made before the clock: a client made per batch cost ~17 ms of CPU (its TLS
        # context), 35 us a heartbeat taken from the collector's cores. A new connection per batch:
        # a kept-alive one stays with the worker that accepted it for the whole run, and with them
        # runs were bimodal (varying, PostgreSQL: 3,700 or 6,100/s), as an uneven split of 4 clients
        # over 2 workers would make them; with a connection per batch they stay within ~20%.
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=0)
        http = httpx.Client(timeout=600, limits=limits)

        def post(body: bytes) -> int:
            r = http.post(base + "/v1/heartbeats", content=body, headers={"Content-Type": "text/plain"})
            r.raise_for_status()
            return sum(x["status"] == "accepted" for x in r.json()["results"])

        cpu0 = cpu_seconds(proc.pid)
        db0 = None if db_pid is None else cpu_seconds(db_pid)
        mine = time.process_time()  # the clients run in this process
        t = time.perf_counter()
        with http, ThreadPoolExecutor(clients) as pool:
            accepted = sum(pool.map(post, batches))
        elapsed = time.perf_counter() - t
        cpu1 = cpu_seconds(proc.pid)
        db1 = None if db_pid is None else cpu_seconds(db_pid)
        mine = time.process_time() - mine
    finally:
        proc.terminate()
        proc.wait(60)
        log.close()
    if accepted != len(lines):
        print(f"  {name}: only {accepted} of {len(lines)} accepted (see {tmp / name}.log)")
    cpu = None if cpu0 is None or cpu1 is None else (cpu1 - cpu0) / len(lines)
    db_cpu = None if db0 is None or db1 is None else (db1 - db0) / len(lines)
    return len(lines) / elapsed, cpu, mine / len(lines), db_cpu


def print_median(name: str, workload: str, layout: str, runs: list[tuple[float, bool]]) -> None:
    """The median ratio of --repeat runs: on a shared VM one run moved by +-10%
    (docs/performance.md, "Twenty-fourth pass"), so a goal is judged on several. Runs flagged as taken on
    a busy machine are left out of it, and counted."""
    kept = sorted(r for r, busy in runs if not busy)
    left = len(runs) - len(kept)
    aside = f"; {left} flagged run{'s' if left > 1 else ''} left out" if left else ""
    if not kept:
        print(f"  median, {name}, {workload}, {layout}: none (every run flagged{aside})")
        return
    listed = ", ".join(f"{r:.2f}" for r in kept)
    print(f"  median of {len(kept)} runs, {name}, {workload}, {layout}: {statistics.median(kept):.2f} "
          f"(goal >= 0.5; runs {listed}; {sum(r >= 0.5 for r in kept)} at or above 0.5{aside})")


def main() -> int:
    ap = argparse.ArgumentParser()
    # 24,000: each ingest run lasts a few seconds (at 6,000, about one: ±15% from run to run)
    ap.add_argument("--heartbeats", type=int, default=24_000)
    ap.add_argument("--agents", type=int, default=12)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--workers", type=int, help="collector workers (default: its cores + 1)")
    ap.add_argument("--backends", default="sqlite,postgresql", help="which of sqlite,postgresql to run")
    ap.add_argument(
        "--layouts", default="shared,apart",
        help="shared: the collector, the clients and the database on all the cores; apart: the "
        "collector alone on all but one, the clients and PostgreSQL on that one",
    )
    ap.add_argument("--workloads", default="steady,varying", help="which of steady,varying to run")
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs of each (a fresh database each), then their median ratio")
    args = ap.parse_args()
    backends, layouts, workloads = (v.split(",") for v in (args.backends, args.layouts, args.workloads))
    for option, chosen, known in (("--backends", backends, {"sqlite", "postgresql"}),
                                  ("--layouts", layouts, {"shared", "apart"}),
                                  ("--workloads", workloads, {"steady", "varying"})):
        if not set(chosen) <= known:  # a typo ran nothing, and said nothing of it
            ap.error(f"{option}: {','.join(chosen)!r}: a comma-separated list of {', '.join(sorted(known))}")
    if args.repeat < 1:
        ap.error("--repeat: at least 1")
    tmp = Path(tempfile.mkdtemp(prefix="tr7-bench-ingest-"))
    cluster = None
    try:
        keys, lines = make_heartbeats(args.heartbeats, args.agents)
        varying = (make_heartbeats(args.heartbeats, args.agents, keys, varying=True)[1]
                   if "varying" in workloads else [])
        cores = os.cpu_count() or 1
        if "apart" in layouts and cores < 2:
            print("layout apart needs 2 cores or more: skipped")
            layouts.remove("apart")
        print(
            f"{len(lines)} heartbeats x {OBS} observations, batches of {BATCH}, {args.clients} clients, "
            f"{cores} cores"
        )
        raw1 = raw_verify_rate(keys, lines)
        raw_m = raw_verify_rate_cores(keys, lines, cores) if cores > 1 else raw1
        print(
            f"raw Ed25519 verification (the verify loop alone, inputs prepared before the clock): "
            f"{raw1:,.0f}/s on 1 core, {raw_m:,.0f}/s on {cores} cores"
        )
        if raw_m < 0.75 * cores * raw1:
            # Seen once while another job wound down: the 2-core rate came out at 1.05x one core,
            # and every ratio below read ~0.7, against 0.42 a minute later on a quiet machine.
            # Each ratio below is taken against the higher of the readings either side of its run,
            # so a low first reading alone does not carry into them (each says if its own do).
            print(f"note: {cores} cores verify only {raw_m / raw1:.2f}x what one does in this reading: "
                  "something else is using the machine")

        def raw_rate(cpus: set[int]) -> float:
            # on those cores (its processes inherit this one's affinity), whatever this one is
            # pinned to for the run
            pinned = os.sched_getaffinity(0)
            os.sched_setaffinity(0, cpus)
            try:
                n = len(cpus)
                return raw_verify_rate(keys, lines) if n == 1 else raw_verify_rate_cores(keys, lines, n)
            finally:
                os.sched_setaffinity(0, pinned)

        strict = strict_verify_rate(keys, lines)
        print(f"protocol.verify_heartbeat (1 core): {strict:,.0f}/s = {strict / raw1:.2f} of raw on 1 core")
        cluster = PgCluster(durable=True)  # fsync on: durable, as SQLite (synchronous=FULL)
        pg_pid = int((cluster.dir / "data" / "postmaster.pid").read_text().split()[0])
        everything = os.sched_getaffinity(0)
        cases = [(w, batch) for w, batch in (("steady", lines), ("varying", varying)) if w in workloads]
        for layout in layouts:
            mine, theirs, raw = everything, None, raw_m
            if layout == "apart":
                # As the collector runs once PostgreSQL has its own host and the agents are remote:
                # the clients (this process's threads, made after this) and the database server
                # (its postmaster, whose later backends inherit it, and its running processes)
                # on the last CPU; the collector's processes on the others, compared with the raw
                # rate on as many cores.
                *rest, last = sorted(everything)
                theirs, mine = set(rest), {last}
                raw = raw_rate(theirs)
            os.sched_setaffinity(0, mine)
            pin_tree(pg_pid, mine)
            n_cores = len(theirs or everything)
            workers = args.workers or n_cores + 1
            where = (f"collector, clients and database on {n_cores} cores" if theirs is None else
                     f"collector alone on {n_cores} core{'s' if n_cores > 1 else ''}, clients and "
                     "database on another")
            print(f"-- layout {layout}: {where}; {workers} collector workers")
            for name, url_of, db_pid in (
                ("sqlite", lambda w, la=layout: f"sqlite:///{tmp / f'collector-{la}-{w}.db'}", None),
                ("postgresql", lambda w: new_database(cluster.admin_url), pg_pid),
            ):
                if name not in backends:
                    continue
                for workload, batch in cases:
                    ratios: list[tuple[float, bool]] = []  # this case's runs: (ratio, flagged busy)
                    for attempt in range(args.repeat):
                        run = f"{workload}-{attempt}"  # a fresh database and data directory each
                        rate, cpu, client_cpu, db_cpu = run_backend(
                            f"{name}-{layout}-{run}", url_of(run), tmp, keys, batch, args.clients, workers,
                            db_pid, theirs,
                        )
                        # The raw rate read again at once, and the run compared with the higher of the
                        # readings either side of it: on a shared VM the N-core rate moved by 20-40%
                        # within minutes (9,000-16,000/s on 2 cores; the first reading of a run was
                        # the lowest in most runs), and one low reading at the start overstated every
                        # ratio after it. What another tenant takes only lowers a reading: the
                        # higher is the nearer to what the cores can do, and never flatters ingest.
                        before = raw
                        raw = raw_rate(theirs or everything)
                        base = max(before, raw)
                        same = "same cores" if theirs is None else "not the collector's core"
                        cost = f"; clients' CPU {client_cpu * 1e6:,.0f} us/heartbeat ({same})"
                        if db_cpu is not None:
                            cost += f"; PostgreSQL server's CPU {db_cpu * 1e6:,.0f} us/heartbeat ({same})"
                        if cpu is not None:
                            cost = (f"; collector CPU {cpu * 1e6:,.0f} us/heartbeat = {cpu * raw1:.1f} x raw"
                                    f"{cost}")
                        one = "" if n_cores == 1 else f", {rate / raw1:.2f} of raw on 1 core"
                        busy = n_cores > 1 and base < 0.75 * n_cores * raw1
                        if busy:
                            one += (f" (WARNING: {n_cores} cores verified only {base / raw1:.2f}x what one "
                                    "does either side of this run: the machine was busy, the ratio "
                                    "overstates ingest; run it again)")
                        print(
                            f"ingest over HTTP, {name}, {workload}, {layout}: {rate:,.0f}/s = "
                            f"{rate / base:.2f} of raw on {n_cores} core{'s' if n_cores > 1 else ''} "
                            f"(goal >= 0.5; raw {before:,.0f}/s before the run, {raw:,.0f}/s after)"
                            f"{one}{cost}"
                            # the collector alone where the clients and the database have a core of
                            # their own; all of them where they share (SQLite: in the collector's)
                            + ceiling(rate, base, n_cores, [cpu] if theirs is not None else [
                                cpu, client_cpu, db_cpu if name == "postgresql" else 0.0])
                        )
                        ratios.append((rate / base, busy))
                    if args.repeat > 1:
                        print_median(name, workload, layout, ratios)
            os.sched_setaffinity(0, everything)
            pin_tree(pg_pid, everything)
        return 0
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
