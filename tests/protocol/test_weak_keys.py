"""Weak Ed25519 public keys (small-order, mixed-order, non-canonical) are refused wherever a key enters."""

import base64
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from nacl.bindings import crypto_core_ed25519_add

from protocol.errors import ProtocolError
from protocol.heartbeat import verify_heartbeat
from protocol.keys import AgentKey, kid_of, load_public_key_b64
from protocol.note import NoteError, NoteVerifier, _key_id

IDENTITY = bytes([1]) + bytes(31)  # the neutral element: every [k]A is the identity
# Points of order 2, 4 and 8 (libsodium's blocklist), and encodings of y >= p (non-canonical).
WEAK = {
    "identity": IDENTITY,
    "order 2": bytes([0xEC]) + b"\xff" * 30 + bytes([0x7F]),
    "order 4": bytes(32),
    "order 4, sign bit": bytes(31) + bytes([0x80]),
    "order 8": bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"),
    "order 8, other": bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"),
    "y = p": bytes([0xED]) + b"\xff" * 30 + bytes([0x7F]),
    "y = p + 1": bytes([0xEE]) + b"\xff" * 30 + bytes([0x7F]),
}


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def mixed_order() -> bytes:
    """A generated key plus a point of order 4: it decodes, but is not in the prime-order subgroup."""
    return crypto_core_ed25519_add(AgentKey.generate().public_raw, WEAK["order 4"])


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged(kid: str) -> str:
    """A heartbeat 'signed' with R = identity, S = 0, which needs no private key at all."""
    payload = {
        "v": 1, "agent": kid, "seq": 1, "prev": "0" * 64, "time": "2026-11-02T10:00:00Z", "interval": 300,
        "polls": [{"adapter": "a", "platform": "kvm", "ok": True, "error": None}],
        "observations": [{"instance": "TR7-0001", "adapter": "a", "vm": "u1", "host": None,
                          "state": "running", "capacity": None}]}
    head = {"alg": "EdDSA", "kid": kid, "typ": "tr7-heartbeat+json"}
    return ".".join(b64url(json.dumps(x, separators=(",", ":")).encode()) for x in (head, payload)) + (
        "." + b64url(IDENTITY + bytes(32)))


def test_the_threat_is_real_without_the_check() -> None:
    # OpenSSL (and so any JOSE library on it) loads the identity as a key and accepts a forgery.
    kid = kid_of(IDENTITY)
    hb = verify_heartbeat(forged(kid), {kid: Ed25519PublicKey.from_public_bytes(IDENTITY)})
    assert hb.observations[0]["state"] == "running"


@pytest.mark.parametrize("name", sorted(WEAK))
def test_weak_keys_are_refused(name: str) -> None:
    with pytest.raises(ProtocolError) as err:
        load_public_key_b64(b64(WEAK[name]))
    assert err.value.rule == "key.weak" and "forge" in str(err.value)


def test_mixed_order_key_is_refused() -> None:
    raw = mixed_order()
    Ed25519PublicKey.from_public_bytes(raw)  # a point that decodes...
    with pytest.raises(ProtocolError) as err:
        load_public_key_b64(b64(raw))  # ...but not one of prime order
    assert err.value.rule == "key.weak"


def test_generated_keys_are_accepted() -> None:
    for _ in range(200):
        key = AgentKey.generate()
        assert kid_of(load_public_key_b64(key.public_b64).public_bytes_raw()) == key.kid


def test_weak_collector_verifier_key_is_refused() -> None:
    # A weak checkpoint key would let anyone sign checkpoints: an auditor's pinned key is checked too.
    for raw in (IDENTITY, mixed_order()):
        vkey = f"collector.example+{_key_id('collector.example', raw).hex()}+{b64(bytes([1]) + raw)}"
        with pytest.raises(NoteError, match="verifier key: public key is not a canonical"):
            NoteVerifier.from_vkey(vkey)
