"""Two real collector processes (uvicorn) ingesting the same heartbeats at once on one database."""

import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import sqlalchemy as sa

from billing import same_invoice, same_usage
from collector import accounting, db, registry
from collector import schema as s
from protocol.timefmt import month_bounds, month_of, previous_month


def _port() -> int:
    with socket.socket() as so:
        so.bind(("127.0.0.1", 0))
        return int(so.getsockname()[1])


def _start(data_dir: Path, db_url: str, log: Path) -> tuple[subprocess.Popen, str]:
    port = _port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "collector.cli",
            "serve",
            "--data-dir",
            str(data_dir),
            "--db",
            db_url,
            "--listen",
            f"127.0.0.1:{port}",
        ],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise AssertionError(log.read_text())
        time.sleep(0.1)
    raise AssertionError("collector did not start: " + log.read_text())


def test_two_processes_same_heartbeats_no_duplicate_no_loss(settings, tools, tmp_path):
    m = previous_month(month_of(int(time.time())))
    m0 = month_bounds(m)[0]
    db.write_tx(settings.engine, lambda c: registry.apply_catalog(c, tools.catalog()))
    agents = [tools.Agent(f"a{i}") for i in range(3)]
    for a in agents:
        tools.enrol(settings, "acme", a, m0 - 86400)
    beats = [
        a.beat(m0 + k * 600 + i, {f"TR7-{i}{k % 7}": "running", "TR7-0001": "running"})
        for k in range(300)
        for i, a in enumerate(agents)
    ]
    batches = [beats[i : i + 60] for i in range(0, len(beats), 60)]
    procs = []
    try:
        for n in range(2):
            procs.append(_start(settings.data_dir, settings.db_url, tmp_path / f"server{n}.log"))
        urls = [base for _p, base in procs]

        def client(order: int) -> list[str]:
            out = []
            with httpx.Client(timeout=120) as http:
                seq = batches if order == 0 else batches[::-1]
                for j, b in enumerate(seq):
                    r = http.post(
                        urls[(j + order) % 2] + "/v1/heartbeats",
                        content="\n".join(b),
                        headers={"Content-Type": "text/plain"},
                    )
                    assert r.status_code == 200, r.text
                    out += [x["status"] for x in r.json()["results"]]
            return out

        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(client, [0, 1, 0, 1]))
    finally:
        for p, _ in procs:
            p.terminate()
            p.wait(30)
    statuses = [x for r in results for x in r]
    assert set(statuses) <= {"accepted", "duplicate"}
    assert statuses.count("accepted") == len(beats)  # each heartbeat accepted exactly once
    with settings.engine.connect() as c:
        idx = sorted(c.execute(sa.select(s.leaves.c.idx).where(s.leaves.c.month == m)).scalars())
        size = c.execute(sa.select(s.logs.c.size).where(s.logs.c.month == m)).scalar_one()
    assert idx == list(range(len(beats))) and size == len(beats)
    with db.read_conn(settings.engine) as c:
        agg, full = accounting.own_result(c, "acme", m), accounting.full_result(c, "acme", m)
    assert same_usage(agg[0], full[0]) and same_invoice(agg[1], full[1])
    assert agg[1]["lines"][0]["quantity"] == 50  # TR7-0001: 300 polls x 10 min = 50 hours
