"""Wire protocol v1 shared by agent, collector and auditor (heartbeat-v1.md)."""

from protocol.errors import ProtocolError
from protocol.heartbeat import Heartbeat, parse_unverified, sign_heartbeat, verify_heartbeat
from protocol.keys import AgentKey, kid_of, load_private_key, load_public_key_b64, public_key_b64

__all__ = [
    "AgentKey",
    "Heartbeat",
    "ProtocolError",
    "kid_of",
    "load_private_key",
    "load_public_key_b64",
    "parse_unverified",
    "public_key_b64",
    "sign_heartbeat",
    "verify_heartbeat",
]
