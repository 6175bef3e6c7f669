"""Progress lines, commands that fail with their stderr, and the demo's background processes."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the venv's bin: tr7-agent, tr7-collector, tr7-audit, moto_server
MARKER = ".tr7-demo"  # only a directory holding it (or an empty one) is ever wiped


class DemoError(Exception):
    """A step failed: what was being done, and the failing command's output."""

    def __init__(self, message: str, output: str = "") -> None:
        super().__init__(message)
        self.output = output


class Progress:
    """One numbered line per step, indented detail lines under it."""

    def __init__(self, total: int) -> None:
        self.total, self.n, self.step = total, 0, ""
        self.t = time.monotonic()

    def __call__(self, title: str) -> None:
        self.done()
        self.n += 1
        self.step = title
        print(f"\n[{self.n}/{self.total}] {title}", flush=True)
        self.t = time.monotonic()

    def done(self) -> None:
        if self.n:
            print(f"    ({time.monotonic() - self.t:.1f} s)", flush=True)

    @staticmethod
    def info(text: str = "") -> None:
        for line in text.rstrip("\n").splitlines() or [""]:
            print(f"    {line}", flush=True)


def prepare_dir(path: Path) -> Path:
    """Wipe a previous demo's directory; refuse to wipe anything that is not one."""
    path = path.resolve()
    if path.exists():
        if not path.is_dir() or (any(path.iterdir()) and not (path / MARKER).exists()):
            raise DemoError(f"{path} exists and is not a demo directory (no {MARKER}); "
                            "choose another --dir or remove it yourself")
        shutil.rmtree(path)
    path.mkdir(parents=True)
    (path / MARKER).write_text("created by scripts/demo; wiped by the next demo run\n")
    return path


def free_port() -> int:
    """A port free right now on 127.0.0.1 (for servers that cannot report the one they bound)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli(name: str, *args: str, env: dict[str, str] | None = None, ok: tuple[int, ...] = (0,),
        timeout: float = 300) -> str:
    """Run a venv command; a non-zero exit (not in `ok`) is a DemoError carrying its stderr."""
    cmd = [str(BIN / name), *args]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                           env={**os.environ, **(env or {})}, cwd=ROOT)
    except subprocess.TimeoutExpired as exc:
        raise DemoError(f"`{name} {' '.join(args)}` did not finish in {timeout:.0f} s") from exc
    if p.returncode not in ok:
        raise DemoError(f"`{name} {' '.join(args)}` exited {p.returncode}", (p.stderr + p.stdout).strip())
    return p.stdout


def cli_full(name: str, *args: str, env: dict[str, str] | None = None,
             timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / name), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=ROOT)


def wait_until(what: str, probe: Callable[[], Any], timeout: float,
               alive: subprocess.Popen[Any] | None = None, log: Path | None = None) -> Any:
    """Call `probe` until it returns a true value; fail if `alive` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if alive is not None and alive.poll() is not None:
            raise DemoError(f"{what}: the process exited with {alive.returncode}", tail(log))
        try:
            got = probe()
        except OSError:
            got = None
        if got:
            return got
        time.sleep(0.3)
    raise DemoError(f"{what}: not ready after {timeout:.0f} s", tail(log))


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as r:
        return bool(r.status == 200)


def tail(log: Path | None, lines: int = 30) -> str:
    if log is None or not log.exists():
        return ""
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


class Processes:
    """Background processes of the demo, stopped in reverse order of start (SIGTERM, then SIGKILL)."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[Any], Callable[[], None] | None]] = []

    def start(self, label: str, cmd: list[str], log: Path, env: dict[str, str] | None = None,
              **kw: Any) -> subprocess.Popen[Any]:
        out = open(log, "ab")  # noqa: SIM115 - the child keeps writing after this function returns
        # A session of its own: Ctrl-C reaches only the demo, which then stops its children in order.
        proc = subprocess.Popen(cmd, stdout=kw.pop("stdout", out), stderr=out, start_new_session=True,
                                env={**os.environ, **(env or {})}, cwd=kw.pop("cwd", ROOT), **kw)
        out.close()
        self.add(label, proc)
        return proc

    def add(self, label: str, proc: subprocess.Popen[Any], stop: Callable[[], None] | None = None) -> None:
        self.procs.append((label, proc, stop))

    @staticmethod
    def terminate(proc: subprocess.Popen[Any], grace: float = 30) -> int:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return int(proc.returncode)

    def stop_all(self) -> list[str]:
        stopped = []
        while self.procs:
            label, proc, stop = self.procs.pop()
            if proc.poll() is None:
                if stop is not None:
                    stop()
                else:
                    self.terminate(proc)
                stopped.append(label)
        return stopped
