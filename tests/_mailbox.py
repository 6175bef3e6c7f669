"""A local SMTP server (aiosmtpd) keeping what it receives, for the account tests; their start time."""

import socket
import threading
from collections.abc import Iterator
from email import message_from_bytes
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from protocol.timefmt import parse_time

T0 = parse_time("2026-10-05T00:00:00Z")
DAY = 86400


class Mailbox:
    """aiosmtpd handler keeping every message it receives as (envelope recipients, message)."""

    def __init__(self) -> None:
        self.messages: list[Any] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.messages.append((envelope.rcpt_tos, message_from_bytes(envelope.content)))
        return "250 OK"


@pytest.fixture
def smtp(monkeypatch: pytest.MonkeyPatch) -> Iterator[Mailbox]:
    """The server, and TR7_SMTP_* pointing at it for the test."""
    box = Mailbox()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    ctl = Controller(box, hostname="127.0.0.1", port=port)
    ctl.start()
    monkeypatch.setenv("TR7_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("TR7_SMTP_PORT", str(port))
    monkeypatch.setenv("TR7_SMTP_FROM", "billing@acme.example")
    try:
        yield box
    finally:
        ctl.stop()
