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


def test_common_options_before_or_after_the_command(tmp_path: Path) -> None:
    """`tr7-collector --data-dir D agent list` (as the README writes it) and `... agent list --data-dir D`."""

    def agents(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "collector.cli", *args], capture_output=True, text=True,
                              check=False)

    before, after = tmp_path / "before", tmp_path / "after"
    assert agents("--data-dir", str(before), "agent", "list").returncode == 0
    assert agents("agent", "list", "--data-dir", str(after)).returncode == 0
    assert (before / "collector.db").exists() and (after / "collector.db").exists()
    # Given in both places, the command's own option wins (the more specific one).
    both, unused = tmp_path / "both", tmp_path / "unused"
    assert agents("--data-dir", str(unused), "agent", "list", "--data-dir", str(both)).returncode == 0
    assert (both / "collector.db").exists() and not unused.exists()
