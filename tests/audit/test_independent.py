"""An auditor without this project's code can check a bundle with standard tools (PyJWT, hashlib)."""

import base64
import hashlib
import json
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


def rfc9162_root(leaves: list[bytes]) -> bytes:
    """MTH of RFC 9162 §2.1.1, written from the RFC text, recursively."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return hashlib.sha256(b"\x01" + rfc9162_root(leaves[:k]) + rfc9162_root(leaves[k:])).digest()


def test_checkpoint_and_lines_verify_with_standard_tools(pristine: Path) -> None:
    name, _key_id, vkey = (pristine / "collector.pub").read_text().strip().split("+", 2)
    collector = Ed25519PublicKey.from_public_bytes(base64.b64decode(vkey)[1:])
    note = (pristine / "checkpoint").read_text()
    text, sig_line = note[: note.rindex("\n\n") + 1], note[note.rindex("\n\n") + 2:]
    signer, sig_b64 = sig_line.removeprefix("\u2014 ").split()
    assert signer == name
    collector.verify(base64.b64decode(sig_b64)[4:], text.encode())  # raises if forged
    origin, size, root_b64 = text.splitlines()[:3]
    lines = (pristine / "heartbeats.jws").read_bytes().splitlines()
    assert int(size) == len(lines) and base64.b64decode(root_b64) == rfc9162_root(lines)
    assert origin.endswith("/acme/2026-10")

    keys = {a["kid"]: Ed25519PublicKey.from_public_bytes(base64.b64decode(a["public_key"]))
            for a in json.loads((pristine / "agents.json").read_text())}
    for token in lines[:: len(lines) // 25]:
        kid = jwt.get_unverified_header(token)["kid"]
        payload = json.loads(jwt.api_jws.PyJWS().decode(token, keys[kid], algorithms=["EdDSA"]))
        assert payload["agent"] == kid
