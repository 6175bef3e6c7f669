"""A clean stop of `serve` (systemd's SIGTERM) leaves the high-water marks at the database's sizes.

Found by a review: uvicorn re-raises SIGTERM and its workers exit without atexit, so the marks
missed the commits of the last second (written at most once a second): a backup taken then and
restored passed the check that must refuse it.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from collector import db, tlog
from collector.settings import Settings
from protocol.timefmt import month_bounds, month_of, previous_month


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("workers", [1, 2])
def test_the_marks_hold_every_commit_after_a_clean_stop(tmp_path: Path, tools, workers: int) -> None:
    data = tmp_path / "data"
    st = Settings(data, f"sqlite:///{data / 'collector.db'}", "collector.test")
    st.open()
    agent = tools.Agent()
    tools.enrol(st, "acme", agent, 0)
    month = previous_month(month_of(int(time.time())))
    t0 = month_bounds(month)[0] + 86400
    beats = [agent.beat(t0 + 60 * i, {"TR7-1": "running"}) for i in range(600)]
    st.engine.dispose()
    port = _port()
    proc = subprocess.Popen([sys.executable, "-m", "collector.cli", "serve", "--data-dir", str(data),
                             "--db", st.db_url, "--listen", f"127.0.0.1:{port}", "--workers", str(workers)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "TR7_ACCOUNTS_TICK": "0"})
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        with httpx.Client(timeout=30) as http:
            for i in range(0, len(beats), 10):  # many small commits, the last within the second
                r = http.post(base + "/v1/heartbeats", content="".join(b + "\n" for b in beats[i:i + 10]),
                              headers={"Content-Type": "text/plain"})
                assert r.status_code == 200 and {x["status"] for x in r.json()["results"]} == {"accepted"}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    with db.read_conn(st.engine) as c:
        assert tlog.log_size(c, "acme", month) == 600
    st.engine.dispose()
    [marks] = json.loads((data / "highwater.json").read_text()).values()
    assert marks == {f"acme/{month}": 600}
