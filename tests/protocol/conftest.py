"""Fixtures for the protocol tests: agent keys, wire payloads, and a JWS forger for strictness tests."""

import json
from collections.abc import Callable
from typing import Any

import pytest

from protocol.heartbeat import ZERO_HASH, b64url_encode, sign_heartbeat, token_digest
from protocol.keys import AgentKey
from protocol.timefmt import format_time, parse_time


@pytest.fixture
def agent_key() -> AgentKey:
    return AgentKey.generate()


@pytest.fixture
def other_key() -> AgentKey:
    return AgentKey.generate()


def _payload(key: AgentKey, seq: int = 1, prev: str = ZERO_HASH,
             time: str = "2026-11-01T00:00:00Z", **overrides: Any) -> dict[str, Any]:
    p: dict[str, Any] = {
        "v": 1, "agent": key.kid, "seq": seq, "prev": prev, "time": time, "interval": 300,
        "polls": [{"adapter": "vc1", "platform": "vmware", "ok": True, "error": None}],
        "observations": [{
            "instance": "TR7-0001", "adapter": "vc1", "vm": "4210aa2e-0000-4000-8000-000000000001",
            "host": "esx01", "state": "running",
            "capacity": {"bundle": "pro", "bandwidth_mbps": 1000, "vservices": 4},
        }],
    }
    p.update(overrides)
    return p


@pytest.fixture
def make_payload() -> Callable[..., dict[str, Any]]:
    """make_payload(key, seq=1, prev=64 zeros, time=..., **member overrides) -> a valid payload."""
    return _payload


@pytest.fixture
def forge() -> Callable[..., str]:
    """forge(key, header, payload) -> a compact JWS correctly signed by ``key`` over any bytes.

    ``header``/``payload`` are dicts (compact JSON) or raw bytes, so a test can break exactly one
    rule and still carry a valid signature: the rejection is then due to that rule alone.
    """

    def _forge(key: AgentKey, header: dict[str, Any] | bytes, payload: dict[str, Any] | bytes) -> str:
        h = header if isinstance(header, bytes) else json.dumps(header, separators=(",", ":")).encode()
        p = payload if isinstance(payload, bytes) else json.dumps(payload, separators=(",", ":")).encode()
        signing_input = f"{b64url_encode(h)}.{b64url_encode(p)}"
        return f"{signing_input}.{b64url_encode(key.sign(signing_input.encode('ascii')))}"

    return _forge


@pytest.fixture
def chain() -> Callable[..., list[str]]:
    """chain(key, n, start_seq=1, prev=64 zeros, start=time, step=300 s) -> n linked heartbeats."""

    def _chain(key: AgentKey, n: int, start_seq: int = 1, prev: str = ZERO_HASH,
               start: str = "2026-11-01T00:00:00Z", step: int = 300) -> list[str]:
        t0 = parse_time(start)
        tokens: list[str] = []
        for i in range(n):
            seq = start_seq + i
            token = sign_heartbeat(key, _payload(key, seq=seq, prev=prev, time=format_time(t0 + i * step)))
            tokens.append(token)
            prev = token_digest(token)
        return tokens

    return _chain

