"""Operator errors of `tr7-collector` are one clear line and exit 1, never a traceback."""

import socket
import subprocess
import sys
from pathlib import Path


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_database_is_one_line(tmp_path: Path) -> None:
    url = f"postgresql://nobody@127.0.0.1:{_closed_port()}/tr7"
    out = subprocess.run([sys.executable, "-m", "collector.cli", "migrate", "--data-dir", str(tmp_path),
                          "--db", url], capture_output=True, text=True, check=False)
    assert out.returncode == 1
    assert out.stderr.startswith("tr7-collector: database unavailable:"), out.stderr
    assert "Traceback" not in out.stderr
