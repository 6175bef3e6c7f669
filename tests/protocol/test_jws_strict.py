"""Strict heartbeat verification: every rule of heartbeat-v1.md §2 rejects, naming its rule.

Each forged token carries a valid signature by the enrolled key, so the rejection can only
come from the rule under test.
"""

import itertools
import json
from collections.abc import Callable
from typing import Any

import pytest

from protocol.errors import ProtocolError
from protocol.heartbeat import (
    TYP,
    ZERO_HASH,
    _split,
    b64url_decode,
    b64url_encode,
    sign_heartbeat,
    verify_heartbeat,
)
from protocol.keys import AgentKey

Payload = dict[str, Any]


def _header(key: AgentKey, **changes: Any) -> dict[str, Any]:
    h: dict[str, Any] = {"alg": "EdDSA", "kid": key.kid, "typ": TYP}
    for name, value in changes.items():
        if value is None:
            h.pop(name, None)
        else:
            h[name] = value
    return h


def _reject(token: str, key: AgentKey, rule: str) -> None:
    with pytest.raises(ProtocolError) as info:
        verify_heartbeat(token, {key.kid: key.public})
    assert info.value.rule == rule, str(info.value)


def test_the_valid_baseline_verifies(agent_key, make_payload, forge):
    # The forger produces accepted heartbeats when nothing is broken: the rejections below are real.
    hb = verify_heartbeat(forge(agent_key, _header(agent_key), make_payload(agent_key)),
                          {agent_key.kid: agent_key.public})
    assert hb.seq == 1 and hb.time == 1793491200


# --- header -----------------------------------------------------------------------------------

HEADER_CASES: list[tuple[str, Callable[[AgentKey], dict[str, Any]]]] = [
    ("alg_hs256", lambda k: _header(k, alg="HS256")),
    ("alg_ed25519_name", lambda k: _header(k, alg="Ed25519")),
    ("alg_none", lambda k: _header(k, alg="none")),
    ("extra_jwk",
     lambda k: _header(k, jwk={"kty": "OKP", "crv": "Ed25519", "x": b64url_encode(k.public_raw)})),
    ("extra_crit", lambda k: _header(k, crit=["exp"], exp=1)),
    ("typ_missing", lambda k: _header(k, typ=None)),
    ("typ_wrong", lambda k: _header(k, typ="JWT")),
    ("kid_missing", lambda k: _header(k, kid=None)),
    ("kid_uppercase", lambda k: _header(k, kid=k.kid.upper())),
    ("kid_not_a_string", lambda k: _header(k, kid=1)),
    ("header_not_an_object", lambda k: ["EdDSA"]),  # type: ignore[return-value]
]


@pytest.mark.parametrize(("case", "make_header"), HEADER_CASES, ids=[c[0] for c in HEADER_CASES])
def test_header_rules(case, make_header, agent_key, make_payload, forge):
    _reject(forge(agent_key, make_header(agent_key), make_payload(agent_key)), agent_key, "jws.header")


def test_alg_none_with_empty_signature_is_rejected(agent_key, make_payload):
    h = json.dumps(_header(agent_key, alg="none")).encode()
    p = json.dumps(make_payload(agent_key)).encode()
    token = f"{b64url_encode(h)}.{b64url_encode(p)}."
    with pytest.raises(ProtocolError) as info:
        verify_heartbeat(token, {agent_key.kid: agent_key.public})
    assert info.value.rule == "jws.header"


def test_duplicate_header_member(agent_key, make_payload, forge):
    raw = b'{"alg":"EdDSA","alg":"EdDSA","kid":"%s","typ":"%s"}' % (agent_key.kid.encode(), TYP.encode())
    _reject(forge(agent_key, raw, make_payload(agent_key)), agent_key, "jws.header")


def test_kid_in_header_differs_from_payload_agent(agent_key, other_key, make_payload, forge):
    payload = make_payload(agent_key, agent=other_key.kid)
    _reject(forge(agent_key, _header(agent_key), payload), agent_key, "payload.agent")


# --- payload ----------------------------------------------------------------------------------

def _obs(p: Payload, **changes: Any) -> Payload:
    p["observations"][0].update(changes)
    return p


def _poll(p: Payload, **changes: Any) -> Payload:
    p["polls"][0].update(changes)
    return p


def _without(p: Payload, name: str) -> Payload:
    del p[name]
    return p


PAYLOAD_CASES: list[tuple[str, Callable[[Payload], Payload], str]] = [
    ("unknown_member", lambda p: {**p, "note": "x"}, "payload"),
    ("missing_member", lambda p: _without(p, "interval"), "payload"),
    ("v_2", lambda p: {**p, "v": 2}, "payload.v"),
    ("v_true", lambda p: {**p, "v": True}, "payload.v"),
    ("seq_as_string", lambda p: {**p, "seq": "1"}, "payload.seq"),
    ("seq_as_bool", lambda p: {**p, "seq": True}, "payload.seq"),
    ("seq_as_float", lambda p: {**p, "seq": 1.0}, "payload.seq"),
    ("seq_zero", lambda p: {**p, "seq": 0}, "payload.seq"),
    ("seq_negative", lambda p: {**p, "seq": -1}, "payload.seq"),
    ("seq_above_int63", lambda p: {**p, "seq": 2**63, "prev": "a" * 64}, "payload.seq"),
    ("interval_as_bool", lambda p: {**p, "interval": True}, "payload.interval"),
    ("interval_as_float", lambda p: {**p, "interval": 300.0}, "payload.interval"),
    ("interval_zero", lambda p: {**p, "interval": 0}, "payload.interval"),
    ("interval_86401", lambda p: {**p, "interval": 86401}, "payload.interval"),
    ("prev_63_chars", lambda p: {**p, "seq": 2, "prev": "a" * 63}, "payload.prev"),
    ("prev_65_chars", lambda p: {**p, "seq": 2, "prev": "a" * 65}, "payload.prev"),
    ("prev_uppercase", lambda p: {**p, "seq": 2, "prev": "A" * 64}, "payload.prev"),
    ("prev_trailing_newline", lambda p: {**p, "seq": 2, "prev": "a" * 64 + "\n"}, "payload.prev"),
    ("seq1_nonzero_prev", lambda p: {**p, "seq": 1, "prev": "0" * 63 + "1"}, "payload.prev"),
    ("time_fraction", lambda p: {**p, "time": "2026-11-01T00:00:00.5Z"}, "payload.time"),
    ("time_offset", lambda p: {**p, "time": "2026-11-01T00:00:00+00:00"}, "payload.time"),
    ("time_lowercase_z", lambda p: {**p, "time": "2026-11-01T00:00:00z"}, "payload.time"),
    ("time_trailing_newline", lambda p: {**p, "time": "2026-11-01T00:00:00Z\n"}, "payload.time"),
    ("time_non_ascii_digits", lambda p: {**p, "time": "\uff12026-11-01T00:00:00Z"}, "payload.time"),
    ("time_feb_30", lambda p: {**p, "time": "2026-02-30T00:00:00Z"}, "payload.time"),
    ("time_epoch_int", lambda p: {**p, "time": 1793491200}, "payload.time"),
    ("polls_not_array", lambda p: {**p, "polls": {}}, "payload.polls"),
    ("platform_unknown", lambda p: _poll(p, platform="xen"), "payload.polls[0].platform"),
    ("ok_as_int", lambda p: _poll(p, ok=1), "payload.polls[0].ok"),
    ("poll_error_number", lambda p: _poll(p, ok=False, error=5), "payload.polls[0].error"),
    ("state_unknown", lambda p: _obs(p, state="on"), "payload.observations[0].state"),
    ("adapter_not_polled", lambda p: _obs(p, adapter="vc2"), "payload.observations[0].adapter"),
    ("instance_space", lambda p: _obs(p, instance="TR7 0001"), "payload.observations[0].instance"),
    ("instance_slash", lambda p: _obs(p, instance="TR7/0001"), "payload.observations[0].instance"),
    ("instance_newline", lambda p: _obs(p, instance="TR7-0001\n"), "payload.observations[0].instance"),
    ("instance_empty", lambda p: _obs(p, instance=""), "payload.observations[0].instance"),
    ("instance_65_chars", lambda p: _obs(p, instance="a" * 65), "payload.observations[0].instance"),
    ("vm_null", lambda p: _obs(p, vm=None), "payload.observations[0].vm"),
    ("capacity_unknown_member",
     lambda p: _obs(p, capacity={"bundle": "pro", "cores": 4}), "payload.observations[0].capacity"),
    ("capacity_bandwidth_string", lambda p: _obs(p, capacity={"bandwidth_mbps": "1000"}),
     "payload.observations[0].capacity.bandwidth_mbps"),
    ("capacity_list", lambda p: _obs(p, capacity=[]), "payload.observations[0].capacity"),
    ("observation_extra_member", lambda p: _obs(p, cpu=2), "payload.observations[0]"),
]


@pytest.mark.parametrize(("case", "mutate", "rule"), PAYLOAD_CASES, ids=[c[0] for c in PAYLOAD_CASES])
def test_payload_rules(case, mutate, rule, agent_key, make_payload, forge):
    token = forge(agent_key, _header(agent_key), mutate(make_payload(agent_key)))
    _reject(token, agent_key, rule)


def test_sign_heartbeat_refuses_what_a_verifier_rejects(agent_key, make_payload):
    with pytest.raises(ProtocolError) as info:
        sign_heartbeat(agent_key, make_payload(agent_key, interval=0))
    assert info.value.rule == "payload.interval"


def test_maximal_valid_values_are_accepted(agent_key, make_payload, forge):
    p = make_payload(agent_key, seq=2**63 - 1, prev="f" * 64, interval=86400)
    _obs(p, instance="a" * 64, capacity=None, host=None)
    _poll(p, ok=False, error="timeout")
    hb = verify_heartbeat(forge(agent_key, _header(agent_key), p), {agent_key.kid: agent_key.public})
    assert hb.seq == 2**63 - 1


def test_duplicate_payload_member(agent_key, make_payload, forge):
    body = json.dumps(make_payload(agent_key), separators=(",", ":")).encode()
    body = body[:-1] + b',"seq":2}'
    _reject(forge(agent_key, _header(agent_key), body), agent_key, "payload")


def test_payload_nan_is_not_json(agent_key, make_payload, forge):
    body = json.dumps(make_payload(agent_key), separators=(",", ":")).encode()
    body = body.replace(b'"interval":300', b'"interval":NaN')
    _reject(forge(agent_key, _header(agent_key), body), agent_key, "payload")


def test_a_number_of_5000_digits_is_refused_in_protocol_terms(agent_key, make_payload, forge):
    """CPython's own message told the sender to call sys.set_int_max_str_digits()."""
    body = json.dumps(make_payload(agent_key), separators=(",", ":")).encode()
    body = body.replace(b'"interval":300', b'"interval":' + b"9" * 5000)
    with pytest.raises(ProtocolError) as err:
        verify_heartbeat(forge(agent_key, _header(agent_key), body), {agent_key.kid: agent_key.public})
    assert err.value.rule == "payload" and "more than 4,300 digits" in str(err.value)
    assert "sys." not in str(err.value)


# --- encoding and signature -------------------------------------------------------------------

def test_padded_base64url_signature(agent_key, make_payload):
    token = sign_heartbeat(agent_key, make_payload(agent_key))
    _reject(token + "==", agent_key, "jws.signature")  # 64 bytes -> 86 chars, padding would be "=="


def test_standard_alphabet_character_in_header(agent_key, make_payload):
    h, p, s = sign_heartbeat(agent_key, make_payload(agent_key)).split(".")
    _reject(f"{h}+.{p}.{s}", agent_key, "jws.header")


def test_padded_base64url_payload(agent_key, make_payload, forge):
    # Choose a payload whose base64url needs padding, then add that padding.
    for extra in range(3):
        p = make_payload(agent_key, observations=[])
        p["polls"][0]["adapter"] = "v" * (3 + extra)
        token = forge(agent_key, _header(agent_key), p)
        h, body, s = token.split(".")
        if len(body) % 4:
            _reject(f"{h}.{body}{'=' * (-len(body) % 4)}.{s}", agent_key, "payload")
            return
    raise AssertionError("no payload length needing padding was found")


def test_signature_by_another_key(agent_key, other_key, make_payload, forge):
    token = forge(other_key, _header(agent_key), make_payload(agent_key))  # claims agent_key's kid
    _reject(token, agent_key, "signature")


def test_signature_over_a_modified_payload(agent_key, make_payload):
    h, _, s = sign_heartbeat(agent_key, make_payload(agent_key)).split(".")
    tampered = b64url_encode(json.dumps(make_payload(agent_key, interval=60)).encode())
    _reject(f"{h}.{tampered}.{s}", agent_key, "signature")


def test_unknown_kid(agent_key, make_payload):
    token = sign_heartbeat(agent_key, make_payload(agent_key))
    with pytest.raises(ProtocolError) as info:
        verify_heartbeat(token, {})
    assert info.value.rule == "kid.unknown"
    with pytest.raises(ProtocolError) as info:
        verify_heartbeat(token, lambda kid: None)
    assert info.value.rule == "kid.unknown"


def test_four_parts_is_not_a_compact_jws(agent_key, make_payload):
    _reject(sign_heartbeat(agent_key, make_payload(agent_key)) + ".x", agent_key, "jws.format")


def test_zero_hash_constant_is_64_zeros():
    assert ZERO_HASH == "0" * 64


def test_lone_surrogate_escape_is_not_text(agent_key, make_payload, forge):
    # json.dumps escapes it as \ud800: valid JSON syntax, but no Unicode string (RFC 8259 §8.2).
    p = _obs(make_payload(agent_key), host="esx\ud800")
    _reject(forge(agent_key, _header(agent_key), p), agent_key, "payload")


def test_surrogate_pair_escape_is_accepted(agent_key, make_payload, forge):
    p = _obs(make_payload(agent_key), host="esx-\U0001f600")
    hb = verify_heartbeat(forge(agent_key, _header(agent_key), p), {agent_key.kid: agent_key.public})
    assert hb.observations[0]["host"] == "esx-\U0001f600"


def test_the_three_part_split_is_str_split_exactly() -> None:
    # Every text of up to 7 characters of 'a' and '.': the same parts, or the same rule and count.
    for n in range(8):
        for chars in itertools.product("a.", repeat=n):
            token = "".join(chars)
            parts = token.split(".")
            if len(parts) == 3:
                assert _split(token) == tuple(parts)
            else:
                with pytest.raises(ProtocolError, match=f"jws.format.*this one {len(parts)}$"):
                    _split(token)


@pytest.mark.parametrize(("text", "message"), [
    ("abé", "not base64url"), ("a", "not base64url"), ("ab=", "not unpadded base64url"),
    ("ab+c", "not unpadded base64url"), ("ab", "non-canonical base64url"),
    ("ab*c", "non-canonical base64url"),
])
def test_base64url_refusals_name_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ProtocolError, match=f"{message}$"):
        b64url_decode(text, "payload")
    assert b64url_decode("YWI", "payload") == b"ab"
