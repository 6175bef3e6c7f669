"""Fixtures: a collector database, an in-process app, a local SMTP server, signing agents."""

import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from collector.settings import Settings

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: tests/_seed.py
from tests import _mailbox
from tests import _seed as seed


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Agent(seed.Agent):
    interval = 3600  # the pages' tests poll hourly


@pytest.fixture(autouse=True)
def _no_background_tick(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests drive time themselves: the server's periodic tick would use the wall clock.
    monkeypatch.setenv("TR7_ACCOUNTS_TICK", "0")


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    with seed.opened(tmp_path) as st:
        yield st


client = seed.client  # the shared fixture


smtp = _mailbox.smtp  # the local SMTP server fixture (tests/_mailbox.py)


@pytest.fixture
def tools() -> Any:
    """Helpers for test modules (importlib mode: they cannot import this conftest by name)."""

    class T:
        pass

    for name, obj in {
        "Agent": Agent,
        "catalog": seed.catalog,
        "apply": seed.apply,
        "enrol": seed.enrol,
        "token": seed.token,
        "free_port": free_port,
    }.items():
        setattr(T, name, staticmethod(obj) if name != "Agent" else obj)
    return T
