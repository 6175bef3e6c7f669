"""Fixtures for the agent tests: config files, the real console script, the mini collector."""

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config import load_config
from agent.poller import Poller
from agent.service import Service
from agent.spool import Spool
from agent.startup import load_key
from protocol.keys import AgentKey, save_private_key

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
AGENT = ROOT / ".venv" / "bin" / "tr7-agent"
PYTHON = ROOT / ".venv" / "bin" / "python"


def agent_env(**extra: str) -> dict[str, str]:
    """Environment of agent subprocesses: sitecustomize maps platform kvm to the fake adapter."""
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
    env["PYTHONPATH"] = str(HERE / "site")
    env.update(extra)
    return env


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_config(path: Path, agent: dict[str, Any], adapters: list[dict[str, Any]]) -> Path:
    lines = ["[agent]"] + [f"{k} = {_toml(v)}" for k, v in agent.items()]
    for a in adapters:
        lines += ["", "[[adapters]]"] + [f"{k} = {_toml(v)}" for k, v in a.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def run_cli(*args: str, env: dict[str, str] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([str(AGENT), *args], env=env or agent_env(), capture_output=True, text=True,
                          timeout=timeout)


class MiniCollector:
    def __init__(self, workdir: Path, tokens: list[str], extra: list[str]) -> None:
        self.workdir = workdir
        self.db = workdir / "collector.db"
        self.port_file = workdir / "collector.port"
        self.tokens = tokens
        self.extra = extra
        self.port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.port_file.unlink(missing_ok=True)
        cmd = [str(PYTHON), str(HERE / "mini_collector.py"), "--db", str(self.db), "--port", str(self.port),
               "--port-file", str(self.port_file), *self.extra]
        for t in self.tokens:
            cmd += ["--token", t]
        with open(self.workdir / "collector.log", "ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, stderr=log)
        deadline = time.monotonic() + 30
        while not self.port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("mini collector did not start: "
                                   + (self.workdir / "collector.log").read_text()[-2000:])
            time.sleep(0.05)
        self.port = int(self.port_file.read_text())

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def query(self, sql: str, *params: Any) -> list[tuple]:
        db = sqlite3.connect(self.db)
        try:
            return db.execute(sql, params).fetchall()
        finally:
            db.close()


@pytest.fixture
def make_collector(tmp_path: Path) -> Iterator[Any]:
    made: list[MiniCollector] = []

    def make(tokens: list[str] | None = None, extra: list[str] | None = None) -> MiniCollector:
        d = tmp_path / f"collector{len(made)}"
        d.mkdir()
        c = MiniCollector(d, tokens or ["tok-1"], extra or [])
        c.start()
        made.append(c)
        return c

    yield make
    for c in made:
        c.kill()


@pytest.fixture
def fake_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process: platform kvm is the fake adapter."""
    import adapters.registry

    monkeypatch.syspath_prepend(str(HERE))
    monkeypatch.setitem(adapters.registry.MODULES, "kvm", "fake_adapter")


def enrolled_agent(tmp_path: Path, collector: MiniCollector, token: str = "tok-1", name: str = "a",
                   interval: int = 1, adapters: list[dict[str, Any]] | None = None,
                   **agent: Any) -> Path:
    """A config in its own state dir, enrolled with the mini collector through `tr7-agent enroll`."""
    state = tmp_path / f"state-{name}"
    cfg = write_config(tmp_path / f"agent-{name}.toml",
                       {"collector": collector.url, "state_dir": str(state), "interval": interval,
                        "allow_short_interval": True, "name": name, **agent},
                       adapters if adapters is not None else [{"name": "lab", "platform": "kvm",
                                                               "instances": 3}])
    res = run_cli("enroll", "--config", str(cfg), "--token", token)
    assert res.returncode == 0, res.stderr
    return cfg


def spool_rows(state: Path, sql: str, *params: Any) -> list[tuple]:
    db = sqlite3.connect(state / "spool.db")
    try:
        return db.execute(sql, params).fetchall()
    finally:
        db.close()


sys.path.insert(0, str(HERE))


@pytest.fixture
def in_process(tmp_path: Path) -> Iterator[Callable[..., tuple[Service, Path]]]:
    """Services with their key, spool and poller, polled by hand (no scheduler), closed after the
    test: a poller left open keeps its idle `poll_0` thread, and `tr7-agent run` in a later test
    of this process then takes the os._exit path of `cli._exit`."""
    made: list[Service] = []

    def make(interval: int = 60, adapters: list | None = None) -> tuple[Service, Path]:
        state = tmp_path / "s"
        state.mkdir()
        save_private_key(AgentKey.generate(), state / "agent.key")
        cfg_path = write_config(tmp_path / "a.toml", {"state_dir": str(state), "interval": interval},
                                adapters or [{"name": "l", "platform": "kvm"}])
        service = Service(load_config(cfg_path))
        service.key = load_key(service.config)
        service.spool = Spool(state / "spool.db")
        service.poller = Poller(service.config.adapters)
        made.append(service)
        return service, cfg_path

    yield make
    for service in made:
        service.poller.close()
        service.spool.close()


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[Callable[[str, str], Path]]:
    """A real tmpfs of its own under tmp_path (needs root): a disk the tests can fill to its last byte."""
    mounted: list[Path] = []

    def do(name: str, options: str) -> Path:
        d = tmp_path / name
        d.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(d)], check=True)
        mounted.append(d)
        return d

    yield do
    for d in mounted:
        subprocess.run(["umount", "-l", str(d)], check=False)


def fill_disk(directory: Path, leave: int = 0) -> Path:
    """Another program takes every byte left but ``leave`` (whole 4 KiB pages; the agent's spool
    files keep theirs); unlink the file returned to free the disk again."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while os.write(fd, b"x" * 4096):
            pass
    except OSError:
        pass
    try:
        if leave:
            os.ftruncate(fd, max(0, os.fstat(fd).st_size - leave))
    finally:
        os.close(fd)
    return filler


def spooled_state(tmp_path: Path, heartbeats: int, step: int = 60) -> tuple[Path, AgentKey, Spool]:
    """A state directory with a saved key and its open spool, holding ``heartbeats`` signed ``step``
    seconds apart (as `run` left them), for the tests that then damage or lose part of it."""
    state = tmp_path / "s"
    state.mkdir()
    key = AgentKey.generate()
    save_private_key(key, state / "agent.key")
    spool = Spool(state / "spool.db")
    polls = [{"adapter": "lab", "platform": "kvm", "ok": True, "error": None}]
    for i in range(heartbeats):
        spool.append(key, 1_790_000_000 + step * i, 60, polls, [])
    return state, key, spool
