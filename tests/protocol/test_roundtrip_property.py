"""Property: every valid payload signs, verifies to the same payload, and joserfc agrees."""

import hashlib
import json
import warnings

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from joserfc import jws
from joserfc.errors import SecurityWarning
from joserfc.jwk import OKPKey

from protocol.heartbeat import b64url_encode, sign_heartbeat, verify_heartbeat
from protocol.keys import AgentKey
from protocol.payload import PLATFORMS, STATES
from protocol.timefmt import format_time

KEY = AgentKey.generate()  # one key for all examples: key generation is not what is tested
ADAPTERS = ["a1", "vc-east", "pve.lab"]
text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=20)
instance = st.text(st.sampled_from("ABCxyz019._:-"), min_size=1, max_size=64)
capacity = st.none() | st.fixed_dictionaries({}, optional={
    "bundle": text, "bandwidth_mbps": st.integers(0, 2**63 - 1), "vservices": st.integers(0, 10_000),
})


@st.composite
def payloads(draw: st.DrawFn) -> dict:
    names = draw(st.lists(st.sampled_from(ADAPTERS), min_size=1, max_size=3, unique=True))
    polls = [{"adapter": n, "platform": draw(st.sampled_from(sorted(PLATFORMS))),
              "ok": draw(st.booleans()), "error": draw(st.none() | text)} for n in names]
    observations = draw(st.lists(st.fixed_dictionaries({
        "instance": instance, "adapter": st.sampled_from(names), "vm": text,
        "host": st.none() | text, "state": st.sampled_from(sorted(STATES)), "capacity": capacity,
    }), max_size=4))
    seq = draw(st.integers(1, 2**63 - 1))
    prev = "0" * 64 if seq == 1 else hashlib.sha256(draw(st.binary(max_size=8))).hexdigest()
    return {"v": 1, "agent": KEY.kid, "seq": seq, "prev": prev,
            "time": format_time(draw(st.integers(0, 4_102_444_799))),
            "interval": draw(st.integers(1, 86400)), "polls": polls, "observations": observations}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=payloads())
def test_sign_verify_round_trip_and_joserfc_agrees(payload):
    token = sign_heartbeat(KEY, payload)
    hb = verify_heartbeat(token, {KEY.kid: KEY.public})
    assert hb.payload == payload
    okp = OKPKey.import_key({"kty": "OKP", "crv": "Ed25519", "x": b64url_encode(KEY.public_raw)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SecurityWarning)  # "EdDSA" is what heartbeat-v1.md fixes
        assert json.loads(jws.deserialize_compact(token, okp, algorithms=["EdDSA"]).payload) == payload
