"""The fast verification paths decide exactly as the plain strict ones: repeated names, base64url.

verify_heartbeat counts member names instead of hooking every decoded object, and checks
base64url without re-encoding it; these tests hold both to the straightforward reference.
"""

import base64
import binascii
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.errors import ProtocolError
from protocol.fastpayload import decode_payload
from protocol.heartbeat import TYP, b64url_decode, b64url_encode, verify_heartbeat
from protocol.keys import AgentKey
from protocol.payload import validate_payload
from protocol.strictjson import loads_strict

KEY = AgentKey.generate()
KEYS = {KEY.kid: KEY.public}
HEADER = json.dumps({"alg": "EdDSA", "kid": KEY.kid, "typ": TYP}, separators=(",", ":")).encode()


def _token(body: bytes) -> str:
    signing_input = f"{b64url_encode(HEADER)}.{b64url_encode(body)}"
    return f"{signing_input}.{b64url_encode(KEY.sign(signing_input.encode('ascii')))}"


def _payload(**obs: Any) -> dict[str, Any]:
    o = {"instance": "TR7-1", "adapter": "a", "vm": "vm-1", "host": "h", "state": "running",
         "capacity": {"bundle": "pro", "bandwidth_mbps": 100, "vservices": 2}}
    o.update(obs)
    return {"v": 1, "agent": KEY.kid, "seq": 1, "prev": "0" * 64, "time": "2026-11-01T00:00:00Z",
            "interval": 300, "polls": [{"adapter": "a", "platform": "kvm", "ok": True, "error": None}],
            "observations": [dict(o), dict(o, instance="TR7-2")]}


def _reference(body: bytes) -> str | None:
    """The rule the plain path (hooked strict JSON, then the schema) rejects with, or None."""
    try:
        validate_payload(loads_strict(body, "payload"), KEY.kid)
    except ProtocolError as exc:
        return exc.rule
    return None


def _outcome(body: bytes) -> str | None:
    try:
        hb = verify_heartbeat(_token(body), KEYS)
    except ProtocolError as exc:
        return exc.rule
    # Accepted: what the fast paths decoded is exactly what the plain decoder reads.
    assert hb.payload == loads_strict(body, "payload")
    return None


def _compact(p: Any) -> bytes:
    return json.dumps(p, separators=(",", ":"), ensure_ascii=False).encode()


REPEATS = [
    (b'{"v":1,', b'{"v":1,"v":1,'),  # top level
    (b'"ok":true,', b'"ok":true,"ok":true,'),  # a poll
    (b'"vm":"vm-1",', b'"vm":"vm-1","vm":"vm-1",'),  # an observation
    (b'"vservices":2}', b'"vservices":2,"vservices":2}'),  # a capacity
    (b'"vservices":2}', b'"vservices":2,"bundle":"pro"}'),  # a capacity, another name
    (b'"state":"running",', b'"state":"x","state":"running",'),  # the repeat would pass the schema
]


@pytest.mark.parametrize("old,new", REPEATS)
@pytest.mark.parametrize("space", [b"", b" ", b"\n"])
def test_a_repeated_name_in_any_object_is_rejected(old: bytes, new: bytes, space: bytes) -> None:
    # Whitespace between a name and its ':' is where a counting check could lose a name.
    body = _compact(_payload()).replace(old, new.replace(b'":', b'"' + space + b":", 1), 1)
    assert body != _compact(_payload())
    with pytest.raises(ProtocolError) as info:
        verify_heartbeat(_token(body), KEYS)
    assert info.value.rule == "payload" and "duplicate" in str(info.value)


def test_strings_starting_with_a_colon_cannot_hide_a_repeated_name() -> None:
    # Each value that opens with ':' adds a '":' to the text; repeated names must still be seen.
    p = _payload(vm=":x", host=":y")
    p["polls"][0]["error"] = ":z"
    body = _compact(p).replace(b'"v":1,', b'"v":1,"v":1,"v":1,', 1)
    assert _outcome(body) == "payload"
    assert _outcome(_compact(p)) is None


def test_a_repeat_and_a_schema_fault_report_the_repeat_first() -> None:
    body = _compact(_payload(state="flying")).replace(b'"vm":"vm-1",', b'"vm":"vm-1","vm":"vm-1",', 1)
    assert _outcome(body) == "payload"


json_text = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 10) | st.sampled_from([2**63 - 1, 2**63, 10**30, 1.0, -0.0])
    | st.sampled_from(["", ":", "a:", ":a", "running", "a"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["v", "vm", ":", "a", "bundle", "bandwidth_mbps", "vservices"]), inner, max_size=3),
    max_leaves=8,
)


@given(
    base=st.sampled_from([_payload(), _payload(vm=":", capacity=None), _payload(host=None, capacity={})]),
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.sampled_from(
        [b'"v":1,', b'"vm":":",', b'":":', b" ", b'"a":', b',"":1', b'"vservices":1,', b"{", b"}", b'":',
         # numbers and bytes where a typed decoder could be laxer than the plain one
         b"1e0", b"0", b"01", b".0", b"-", b"true", b"null", b"\t", b"\\u0041", b"\xc3\xa9", b"\xc0\xaf",
         b"\xff", b"\xe2\x82", b"\xed\xa0\x80", b"\x00", b"\x7f", b"]", b"[", b'"', b","]
    )), max_size=3),
)
@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
def test_fast_path_decides_as_the_reference(base: dict[str, Any], edits: list[tuple[int, bytes]]) -> None:
    body = _compact(base)
    for pos, piece in edits:
        pos %= len(body) + 1
        body = body[:pos] + piece + body[pos:]
    assert _outcome(body) == _reference(body)


@given(value=json_text)
@settings(max_examples=200)
def test_fast_path_decides_as_the_reference_on_odd_capacities(value: Any) -> None:
    p = _payload(capacity=value)
    body = _compact(p)
    assert _outcome(body) == _reference(body)
    doubled = body.replace(b'"capacity":', b'"capacity":' + _compact(value) + b',"capacity":', 1)
    assert _outcome(doubled) == _reference(doubled) == "payload"


def _reference_b64(text: str) -> bytes | None:
    """The plain definition: decodes, and encoding the bytes gives the same text back."""
    if "=" in text or "+" in text or "/" in text:
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    return raw if b64url_encode(raw) == text else None


B64_TEXTS = st.text(st.sampled_from("AQgw_-zZ09+/=!. \n\u00e9"), max_size=12) | st.binary(max_size=12).map(
    b64url_encode
)


@given(B64_TEXTS)
@settings(max_examples=2000)
def test_b64url_decode_accepts_exactly_the_canonical_texts(text: str) -> None:
    expected = _reference_b64(text)
    try:
        got: bytes | None = b64url_decode(text, "r")
    except ProtocolError as exc:
        assert exc.rule == "r"
        got = None
    assert got == expected


def test_the_typed_fast_path_takes_what_agents_send_and_declines_the_rest() -> None:
    # It must take compact agent payloads (else it saves nothing) and leave odd text to the reference.
    body = _compact(_payload(vm="Web Server 01", host=None))
    assert decode_payload(body, KEY.kid) is not None
    for odd in (body.replace(b'"vm":', b'"vm" :', 1), body.replace(b"Web", b"W\\u0065b", 1),
                body.replace(b'"v":1,', b'"v":1,"v":1,', 1), body.replace(b'"v":1,', b'"v":1,"x":1,', 1)):
        assert decode_payload(odd, KEY.kid) is None
    # A payload the schema refuses is declined, never rejected: the reference names the rule.
    assert decode_payload(_compact(_payload(state="flying")), KEY.kid) is None
    assert _outcome(_compact(_payload(state="flying"))) == "payload.observations[0].state"


def _set(path: str, value: Any) -> bytes:
    p = _payload()
    *parents, last = path.split(".")
    target: Any = p
    for name in parents:
        target = target[int(name)] if name.isdigit() else target[name]
    target[last] = value
    return _compact(p)


EDGES = [
    ("v", [2, 1.0, True, "1"]), ("seq", [0, -1, 2**63, 1.5, True]), ("interval", [0, 86401, 1.0]),
    ("prev", ["A" * 64, "0" * 63, None]), ("time", ["2026-11-01T00:00:00+00:00", "2026-02-30T00:00:00Z"]),
    ("agent", ["0" * 32]), ("polls.0.adapter", ["", 1]), ("polls.0.platform", ["vsphere", None]),
    ("polls.0.ok", [1, "true", None]), ("polls.0.error", [1, False]),
    ("observations.0.instance", ["", "a" * 65, "a b", "\u00e9", 1]), ("observations.0.adapter", ["b", None]),
    ("observations.0.vm", [1, None]), ("observations.0.host", [1, False]),
    ("observations.0.state", ["Running", "", None]), ("observations.0.capacity", [[], "pro", 1]),
    ("observations.0.capacity.bundle", [1, None, True]),
    ("observations.1.capacity.bandwidth_mbps", [-1, 2**63, 1.0, True, "1", None]),
    ("observations.1.capacity.vservices", [-1, 2**63, 0.5, False, None]),
]


@pytest.mark.parametrize("path,value", [(p, v) for p, values in EDGES for v in values])
def test_every_typed_member_at_its_edge_is_refused_by_both_paths(path: str, value: Any) -> None:
    # One value just outside each member's type or range: a typed decoder laxer than protocol.payload
    # on any of them would let a heartbeat in that an auditor's verifier refuses.
    body = _set(path, value)
    assert _reference(body) is not None
    assert _outcome(body) == _reference(body)


def test_the_edges_themselves_are_accepted() -> None:
    for path, value in [("seq", 2**63 - 1), ("interval", 86400), ("observations.0.instance", "a" * 64),
                        ("observations.1.capacity.vservices", 2**63 - 1), ("observations.0.capacity", {}),
                        ("observations.0.host", None), ("polls.0.error", "timeout")]:
        body = _set(path, value)
        if path == "seq":  # not the first of a chain: any prev
            body = body.replace(b'"prev":"' + b"0" * 64, b'"prev":"' + b"a" * 64, 1)
        assert _outcome(body) is None, path
        assert decode_payload(body, KEY.kid) is not None, path
