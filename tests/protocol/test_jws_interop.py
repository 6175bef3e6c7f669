"""Heartbeats interoperate with third-party JOSE libraries (joserfc, PyJWT) in both directions."""

import base64
import contextlib
import json
import warnings
from collections.abc import Iterator

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from joserfc import jws
from joserfc.errors import SecurityWarning
from joserfc.jwk import OKPKey

from protocol.heartbeat import TYP, b64url_encode, sign_heartbeat, verify_heartbeat
from protocol.keys import AgentKey, load_public_key_b64


def _okp(key: AgentKey, private: bool) -> OKPKey:
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64url_encode(key.public_raw)}
    if private:
        seed = key.private.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        jwk["d"] = b64url_encode(seed)
    return OKPKey.import_key(jwk)


@contextlib.contextmanager
def _eddsa_allowed() -> Iterator[None]:
    # RFC 9864 deprecates the polymorphic "EdDSA" name; heartbeat-v1.md fixes it, so the
    # library's SecurityWarning is expected here and nothing else is silenced.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SecurityWarning)
        yield


def test_our_heartbeat_verifies_with_joserfc(agent_key, make_payload):
    payload = make_payload(agent_key)
    token = sign_heartbeat(agent_key, payload)
    with _eddsa_allowed():
        obj = jws.deserialize_compact(token, _okp(agent_key, private=False), algorithms=["EdDSA"])
    assert obj.protected == {"alg": "EdDSA", "kid": agent_key.kid, "typ": TYP}
    assert json.loads(obj.payload) == payload


def test_our_heartbeat_verifies_with_pyjwt_from_the_raw_public_key(agent_key, make_payload):
    payload = make_payload(agent_key, observations=[])
    token = sign_heartbeat(agent_key, payload)
    # The key as an auditor receives it: base64 of the raw 32 bytes (heartbeat-v1.md §1).
    public = Ed25519PublicKey.from_public_bytes(base64.b64decode(agent_key.public_b64))
    decoded = jwt.api_jws.PyJWS().decode_complete(token, key=public, algorithms=["EdDSA"])
    assert decoded["header"] == {"alg": "EdDSA", "kid": agent_key.kid, "typ": TYP}
    assert json.loads(decoded["payload"]) == payload


def test_pyjwt_rejects_our_heartbeat_under_another_key(agent_key, other_key, make_payload):
    token = sign_heartbeat(agent_key, make_payload(agent_key))
    try:
        jwt.api_jws.PyJWS().decode_complete(token, key=other_key.public, algorithms=["EdDSA"])
    except jwt.InvalidSignatureError:
        return
    raise AssertionError("PyJWT accepted a heartbeat under the wrong key")


def test_joserfc_compact_jws_verifies_with_verify_heartbeat(agent_key, make_payload):
    payload = make_payload(agent_key, seq=7, prev="ab" * 32)
    header = {"alg": "EdDSA", "kid": agent_key.kid, "typ": TYP}
    with _eddsa_allowed():
        token = jws.serialize_compact(
            header, json.dumps(payload).encode(), _okp(agent_key, private=True), algorithms=["EdDSA"]
        )
    hb = verify_heartbeat(token, {agent_key.kid: load_public_key_b64(agent_key.public_b64)})
    assert (hb.kid, hb.seq, hb.prev, hb.interval) == (agent_key.kid, 7, "ab" * 32, 300)
    assert hb.observations == payload["observations"]


def test_pyjwt_compact_jws_verifies_with_verify_heartbeat(agent_key, make_payload):
    payload = make_payload(agent_key, seq=2, prev="cd" * 32)
    token = jwt.api_jws.PyJWS().encode(
        json.dumps(payload).encode(), agent_key.private, algorithm="EdDSA",
        headers={"kid": agent_key.kid, "typ": TYP},
    )
    hb = verify_heartbeat(token, {agent_key.kid: agent_key.public})
    assert hb.seq == 2
    assert hb.payload == payload
