"""A real collector process (uvicorn) on a free 127.0.0.1 port, for browser tests and benchmarks."""

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from collector.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve_collector(settings: Settings, wait: float = 30.0) -> Iterator[str]:
    """Serve ``settings``' database and data dir until the block ends; yields the base URL once
    /healthz answers. The accounts tick is off: callers drive time themselves."""
    port = free_port()
    env = {
        **os.environ,
        "TR7_COLLECTOR_DATA_DIR": str(settings.data_dir),
        "TR7_COLLECTOR_DB": settings.db_url,
        "TR7_COLLECTOR_ORIGIN": settings.origin,
        "TR7_ACCOUNTS_TICK": "0",
    }
    cmd = [sys.executable, "-m", "uvicorn", "collector.server:app_from_env", "--factory"]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                raise RuntimeError(f"the collector exited with {proc.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the collector did not answer /healthz within {wait:.0f} s")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
