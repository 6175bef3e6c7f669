"""Fixtures: a collector database, an in-process app, a local SMTP server, signing agents."""

import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from fastapi.testclient import TestClient

from collector import db, registry
from collector.server import create_app
from collector.settings import Settings
from protocol.heartbeat import ZERO_HASH, sign_heartbeat, token_digest
from protocol.keys import AgentKey
from protocol.timefmt import format_time


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Agent:
    """Signs a chain of heartbeats like tr7-agent (seq, prev)."""

    def __init__(self, name: str = "agent") -> None:
        self.name, self.key = name, AgentKey.generate()
        self.seq, self.prev = 1, ZERO_HASH

    def beat(self, t: int, instances: dict[str, str], capacity: dict[str, Any] | None = None) -> str:
        obs = [
            {"instance": i, "adapter": "a1", "vm": f"vm-{i}", "host": "h1", "state": st, "capacity": capacity}
            for i, st in sorted(instances.items())
        ]
        payload = {
            "v": 1,
            "agent": self.key.kid,
            "seq": self.seq,
            "prev": self.prev,
            "time": format_time(t),
            "interval": 3600,
            "polls": [{"adapter": "a1", "platform": "kvm", "ok": True, "error": None}],
            "observations": obs,
        }
        token = sign_heartbeat(self.key, payload)
        self.seq, self.prev = self.seq + 1, token_digest(token)
        return token


def catalog(provider: str = "acme", customers: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "provider": {"id": provider, "name": provider.title(), "currency": "EUR"},
        "policy": {"gaps": {"mode": "evidence"}},
        "bundles": ["basic", "pro"],
        "platform_licenses": [{"id": "PL-1", "valid_from": "2026-01-01T00:00:00Z", "valid_to": None}],
        "customers": [{"id": c, "name": f"Customer {c}", "downgraded": []} for c in (customers or ["c1"])],
        "licenses": [
            {
                "id": "SL-1",
                "customer": "c1",
                "instance": "TR7-0001",
                "model": "payg",
                "unit": "hour",
                "start": "2026-01-01T00:00:00Z",
                "end": None,
                "capacity": [
                    {"from": "2026-01-01T00:00:00Z", "bundle": "pro", "bandwidth_mbps": 500, "vservices": 10}
                ],
            },
        ],
        "rates": {
            "hourly": [{"bundle": "pro", "max_bandwidth_mbps": 1000, "price": "0.0450"}],
            "monthly": [],
        },
    }
    doc.update(extra)
    return doc


@pytest.fixture(autouse=True)
def _no_background_tick(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests drive time themselves: the server's periodic tick would use the wall clock.
    monkeypatch.setenv("TR7_ACCOUNTS_TICK", "0")


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    st = Settings(tmp_path / "data", f"sqlite:///{tmp_path / 'collector.db'}", "collector.test")
    st.open()
    yield st
    st.engine.dispose()


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


def apply(settings: Settings, doc: dict[str, Any]) -> None:
    db.write_tx(settings.engine, lambda c: registry.apply_catalog(c, doc))


def enrol(settings: Settings, provider: str, agent: Agent, at: int) -> None:
    db.write_tx(
        settings.engine, lambda c: registry.add_agent(c, provider, agent.name, agent.key.public_b64, at)
    )


def token(settings: Settings, provider: str | None, role: str) -> str:
    return db.write_tx(settings.engine, lambda c: registry.new_api_token(c, provider, role, 0))


class Mailbox:
    """aiosmtpd handler keeping every message it receives."""

    def __init__(self) -> None:
        self.messages: list[Any] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        from email import message_from_bytes

        with self.lock:
            self.messages.append((envelope.rcpt_tos, message_from_bytes(envelope.content)))
        return "250 OK"


@pytest.fixture
def smtp(monkeypatch: pytest.MonkeyPatch) -> Iterator[Mailbox]:
    box = Mailbox()
    port = free_port()
    ctl = Controller(box, hostname="127.0.0.1", port=port)
    ctl.start()
    monkeypatch.setenv("TR7_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("TR7_SMTP_PORT", str(port))
    monkeypatch.setenv("TR7_SMTP_FROM", "billing@acme.example")
    try:
        yield box
    finally:
        ctl.stop()


@pytest.fixture
def tools() -> Any:
    """Helpers for test modules (importlib mode: they cannot import this conftest by name)."""

    class T:
        pass

    for name, obj in {
        "Agent": Agent,
        "catalog": catalog,
        "apply": apply,
        "enrol": enrol,
        "token": token,
        "free_port": free_port,
    }.items():
        setattr(T, name, staticmethod(obj) if name != "Agent" else obj)
    return T
