"""Deterministic agent keys and a month of signed heartbeats, for the collector benchmarks."""

import base64
import hashlib
import json

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol.heartbeat import ZERO_HASH, token_digest
from protocol.keys import AgentKey
from protocol.timefmt import format_time, month_bounds


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def agent_key(label: str, ai: int) -> AgentKey:
    """The same key for the same (label, agent index) in every run, so reruns bill alike."""
    return AgentKey(Ed25519PrivateKey.from_private_bytes(hashlib.sha256(f"{label}-{ai}".encode()).digest()))


def sign_agent_month(
    key: AgentKey, month: str, ai: int, n_inst: int, interval: int, offset: int
) -> list[str]:
    """One agent's chain over the month, polls at ``offset + k * interval``: instance j stops 1 hour in 11.

    Signed directly (not through sign_heartbeat's validation): a generator, not what is measured.
    """
    m0, m1 = month_bounds(month)
    head = b64(json.dumps({"alg": "EdDSA", "kid": key.kid, "typ": "tr7-heartbeat+json"},
                          separators=(",", ":")).encode())
    out, prev = [], ZERO_HASH
    for seq, t in enumerate(range(m0 + offset, m1, interval), start=1):
        obs = [
            {
                "instance": f"TR7-{ai:03d}-{j:02d}",
                "adapter": "a",
                "vm": f"vm-{ai}-{j}",
                "host": "h",
                "state": "running" if (t // 3600 + j) % 11 else "stopped",
                "capacity": {"bundle": "pro", "bandwidth_mbps": 500},
            }
            for j in range(n_inst)
        ]
        payload = {
            "v": 1, "agent": key.kid, "seq": seq, "prev": prev, "time": format_time(t),
            "interval": interval,
            "polls": [{"adapter": "a", "platform": "kvm", "ok": True, "error": None}],
            "observations": obs,
        }
        si = f"{head}.{b64(json.dumps(payload, separators=(',', ':')).encode())}"
        tok = f"{si}.{b64(key.sign(si.encode()))}"
        out.append(tok)
        prev = token_digest(tok)
    return out
