"""The fast verification paths decide exactly as the plain strict ones: repeated names, base64url.

verify_heartbeat counts member names instead of hooking every decoded object, and checks
base64url without re-encoding it; these tests hold both to the straightforward reference.
"""

import base64
import binascii
import json
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import sharedpayload
from protocol.errors import ProtocolError
from protocol.fastpayload import decode_payload
from protocol.heartbeat import TYP, b64url_decode, b64url_encode, verify_heartbeat, verify_heartbeat_shared
from protocol.keys import AgentKey
from protocol.payload import validate_payload
from protocol.sharedpayload import clear_memo
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
    ("agent", ["0" * 32]), ("polls.0.adapter", [1, None]), ("polls.0.platform", ["vsphere", None]),
    ("polls.0.ok", [1, "true", None]), ("polls.0.error", [1, False]),
    ("observations.0.instance", ["", "a" * 65, "a b", "\u00e9", 1, "a,b", ",", "a\nb", "a/b"]),
    ("observations.0.instance", ["a" * 64 + "\n", "a" * 63 + "\u00e9"]),
    ("observations.1.instance", ["TR7-2,", "*", "a" * 65]), ("observations.0.adapter", ["b", None]),
    ("observations.0.vm", [1, None]), ("observations.0.host", [1, False]),
    ("observations.0.state", ["Running", "", None]), ("observations.0.capacity", [[], "pro", 1]),
    ("observations.0.capacity.bundle", [1, None, True]),
    ("observations.1.capacity.bandwidth_mbps", [-(2**63) - 1, 2**63, 1.0, True, "1", None]),
    ("observations.1.capacity.vservices", [-(2**63) - 1, 2**63, 0.5, False, None]),
]


@pytest.mark.parametrize("path,value", [(p, v) for p, values in EDGES for v in values])
def test_every_typed_member_at_its_edge_is_refused_by_both_paths(path: str, value: Any) -> None:
    # One value just outside each member's type or range: a typed decoder laxer than protocol.payload
    # on any of them would let a heartbeat in that an auditor's verifier refuses.
    body = _set(path, value)
    assert _reference(body) is not None
    assert _outcome(body) == _reference(body)


def test_an_empty_adapter_name_is_a_name_on_every_path() -> None:
    """§2: `adapter` is a string, unique within the agent, with no length given: "" was refused by the
    collector and by tr7-audit, a heartbeat another agent may sign. Found by an interop review."""
    p = _payload(adapter="")
    p["polls"][0]["adapter"] = ""
    body = _compact(p)
    assert _reference(body) is None and _outcome(body) is None and _twice(body) is None
    p["polls"].append({"adapter": "", "platform": "aws", "ok": True, "error": None})
    assert _reference(_compact(p)) == _outcome(_compact(p)) == "payload.polls[1].adapter"  # twice: refused


def test_the_edges_themselves_are_accepted() -> None:
    for path, value in [("seq", 2**63 - 1), ("interval", 86400), ("observations.0.instance", "a" * 64),
                        ("observations.1.capacity.vservices", 2**63 - 1), ("observations.0.capacity", {}),
                        ("observations.1.capacity.vservices", -1),
                        ("observations.1.capacity.bandwidth_mbps", -(2**63)),
                        ("observations.0.host", None), ("polls.0.error", "timeout")]:
        body = _set(path, value)
        if path == "seq":  # not the first of a chain: any prev
            body = body.replace(b'"prev":"' + b"0" * 64, b'"prev":"' + b"a" * 64, 1)
        assert _outcome(body) is None, path
        assert decode_payload(body, KEY.kid) is not None, path


# --- The collector's path: observations memoised by their exact bytes (verify_heartbeat_shared) ---


def _shared(body: bytes) -> str | None:
    """The rule verify_heartbeat_shared rejects with, or None; on acceptance, what it returns is
    exactly what the plain decoder reads (the observations through the shared Observations)."""
    try:
        hb, obs = verify_heartbeat_shared(_token(body), KEYS)
    except ProtocolError as exc:
        return exc.rule
    plain = loads_strict(body, "payload")
    assert hb.observations == []
    assert [msgspec.to_builtins(o) for o in obs.items] == plain["observations"]
    assert {**hb.payload, "observations": plain["observations"]} == plain
    return None


def _twice(body: bytes) -> str | None:
    """The outcome on a cold memo and on a warm one (a hit when the array was memoised)."""
    clear_memo()
    cold = _shared(body)
    assert _shared(body) == cold
    return cold


def _array(body: bytes) -> bytes:
    start = body.index(b'"observations":') + len(b'"observations":')
    return body[start : body.rindex(b"]") + 1]


def test_the_shared_path_memoises_the_array_and_shares_one_immutable_value() -> None:
    clear_memo()
    p = _payload()
    one, two = _compact(p), _compact({**p, "seq": 2, "prev": "a" * 64, "time": "2026-11-01T00:01:00Z"})
    _, a = verify_heartbeat_shared(_token(one), KEYS)
    _, b = verify_heartbeat_shared(_token(two), KEYS)
    assert a is b and sharedpayload._memo.get(_array(one)) is a
    with pytest.raises((AttributeError, TypeError)):
        a.items[0].state = "stopped"  # type: ignore[misc]
    with pytest.raises((AttributeError, TypeError)):
        a.items = ()  # type: ignore[misc]
    assert isinstance(a.items, tuple) and isinstance(a.adapters, frozenset)


TOP_EDITS = [  # the memoised array under a top level that the reference refuses
    (b'{"v":1,', b'{"v":1,"v":1,'), (b'{"v":1,', b'{"v":1,"x":1,'), (b'{"v":1,', b'{"v":2,'),
    (b'"ok":true,', b'"ok":true,"ok":true,'), (b'"ok":true,', b'"ok":true,"x":null,'),
    (b'"adapter":"a","platform"', b'"adapter":"b","platform"'),  # its observations name "a"
    (b'"interval":300,', b'"interval":0,'), (b'"interval":300,', b'"interval":300,"observations":[],'),
    (b'"v":1,', b'"v":1,"observations":[{"instance":"x"}],'), (b'"time":"2026', b'"time":"2O26'),
    (b'"seq":1,', b'"seq":1,"seq":2,'),
]


@pytest.mark.parametrize("old,new", TOP_EDITS)
def test_a_memoised_array_under_another_top_level_is_judged_as_the_reference(
    old: bytes, new: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = _compact(_payload())
    clear_memo()
    assert _shared(body) is None and _array(body) in sharedpayload._memo  # memoised
    # From here on the array is never decoded again: whenever it is looked up, it is a hit.
    monkeypatch.setattr(sharedpayload, "_decode_observations", lambda key: pytest.fail("a miss"))
    edited = body.replace(old, new, 1)
    assert edited != body
    assert _reference(edited) is not None
    assert _shared(edited) == _reference(edited)  # a hit, yet refused with the reference's rule
    assert _shared(body) is None


INNER_EDITS = [  # arrays the memo must never hold: repeated or unknown names inside
    (b'"vm":"vm-1",', b'"vm":"vm-1","vm":"vm-1",'), (b'"vm":"vm-1",', b'"vm":"vm-1","x":1,'),
    (b'"vservices":2}', b'"vservices":2,"vservices":2}'), (b'"vservices":2}', b'"vservices":2,"x":2}'),
    (b'"state":"running",', b'"state":"x","state":"running",'),
    (b'"capacity":{', b'"capacity":{"bundle":1,'),
]


@pytest.mark.parametrize("old,new", INNER_EDITS)
def test_an_array_with_a_repeated_or_unknown_name_is_never_memoised(old: bytes, new: bytes) -> None:
    body = _compact(_payload())
    clear_memo()
    assert _shared(body) is None  # the clean array is memoised first
    edited = body.replace(old, new, 1)
    for _ in range(2):  # the second time would be a hit, had the first been memoised
        assert _reference(edited) is not None
        assert _shared(edited) == _reference(edited)
        assert _array(edited) not in sharedpayload._memo
    assert _shared(body) is None


def test_a_hit_then_an_array_one_byte_apart() -> None:
    p = _payload()
    body = _compact(p)
    for old, new in [(b'"running"', b'"runninh"'), (b'"vm-1"', b'"vm-2"'), (b'100', b'101'), (b'100', b'1e2'),
                     (b'"TR7-1"', b'"TR7 1"'), (b'"vm-1"', b'"vm-\xff"'), (b'"vm-1"', b'"vm-\xed"'),
                     (b'2}', b'2]'), (b'"h"', b'"\xc3\xa9"'), (b'"host":"h"', b'"host":nul')]:
        clear_memo()
        assert _shared(body) is None
        edited = body.replace(old, new, 1)
        assert edited != body and len(_array(edited)) == len(_array(body)) + len(new) - len(old)
        assert _shared(edited) == _reference(edited), (old, new)
        assert _shared(edited) == _reference(edited), (old, new)  # and once more, maybe a hit now
        assert _shared(body) is None


def test_the_array_anywhere_in_the_payload() -> None:
    # Agents write observations last; elsewhere the whole text is counted (the other branch).
    p = _payload()
    rest = _compact(p)[1:].split(b',"observations":')[0]
    body = b'{"observations":' + _compact(p["observations"]) + b"," + rest + b"}"
    assert loads_strict(body, "payload") == p
    assert _twice(body) is None
    for old, new in [(b'"v":1,', b'"v":1,"v":1,'), (b'"vm":"vm-1",', b'"vm":"vm-1","vm":"vm-1",'),
                     (b'"observations":', b'"observations":[],"observations":')]:
        edited = body.replace(old, new, 1)
        assert _twice(edited) == _reference(edited) == "payload"


HEAD_EDITS = [  # around a known array, the top level alone is decoded: each must still decide
    (b',"observations":', b',"x":","observations":'),  # the member inside a string: not JSON
    (b',"observations":', b',"x":"\\","observations":'),  # an escape before it
    (b',"observations":', b',"x":"" ,"observations":'),  # a quote, then whitespace
    (b',"observations":', b',"observations" :'),  # whitespace: the array is not where it looks
    (b',"observations":', b',"observations": '),
    (b'"agent":"', b'"agent":"\\u0030'),
    (b',"observations":', b',"observations":[],"observations":'),  # the first one holds []
    (b'{"v":1,', b'{"v":1,"v" :1,'),  # a repeated name the '":' count cannot see
    (b'{"v":1,', b'{"v":1,"v"\t:1,'),
]


@pytest.mark.parametrize("old,new", HEAD_EDITS)
def test_a_known_array_after_any_top_level_is_judged_as_the_reference(old: bytes, new: bytes) -> None:
    # The last array of a key (and the memo) is known: its top level is then decoded alone, with
    # the array replaced by [] (sharedpayload._last_array). Warm from the same key's good text.
    body = _compact(_payload())
    for warm in (True, False):
        clear_memo()
        if warm:
            assert _shared(body) is None
        edited = body.replace(old, new, 1)
        assert edited != body
        assert _shared(edited) == _reference(edited) == _outcome(edited), (old, new, warm)
        assert _shared(body) is None


def test_a_keys_last_array_is_known_without_the_memo(monkeypatch: pytest.MonkeyPatch) -> None:
    body = _compact(_payload())
    clear_memo()
    assert _shared(body) is None
    with sharedpayload._memo_lock:
        sharedpayload._memo.clear()  # evicted from the memo, still the key's last array
    monkeypatch.setattr(sharedpayload, "_decode_observations", lambda key: pytest.fail("decoded again"))
    assert _shared(_compact({**_payload(), "seq": 2, "prev": "a" * 64})) is None
    other = _payload(vm="vm-9")  # another array: not known, decoded (the stub fails the test)
    monkeypatch.undo()
    assert _shared(_compact(other)) is None
    assert sharedpayload._recent[KEY.kid][0] == _array(_compact(other))


def test_the_last_arrays_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_memo()
    monkeypatch.setattr(sharedpayload, "RECENT_KEYS", 3)
    body = _compact(_payload())
    for i in range(10):  # another key's name each time (declined: the agent member is not it)
        assert sharedpayload.decode_payload_shared(body, f"{i:032x}") is None
        assert 1 <= len(sharedpayload._recent) <= 3
    clear_memo()


def test_msgspec_checks_a_raw_spans_json_syntax_but_not_its_utf8() -> None:
    # What the memo relies on: a Raw span is valid JSON (else the top level fails to decode) and
    # its UTF-8 is checked by the typed decode of a miss (the span is the memo's whole key).
    good = _compact(_payload())
    assert bytes(sharedpayload._TOP_DECODER.decode(good).observations) == _array(good)
    # Anchored on the member: a bare b"100" also matched inside the random kid (~1 run in 140),
    # where replacing it leaves valid JSON.
    for old, new in [(b":100,", b":01,"), (b":100,", b":1e,"), (b'"host":"h"', b'"host":nul'),
                     (b"}]", b"},]"), (b'"vm":', b'"vm"'), (b'"h"', b'"\x01"'), (b":100,", b":NaN,"),
                     (b"}]", b"}")]:
        assert old in good
        bad = good.replace(old, new, 1)
        with pytest.raises(msgspec.DecodeError):
            sharedpayload._TOP_DECODER.decode(bad)
    lax = good.replace(b'"h"', b'"\xff"', 1)
    assert bytes(sharedpayload._TOP_DECODER.decode(lax).observations) == _array(lax)  # not checked here
    with pytest.raises(msgspec.DecodeError):
        sharedpayload._OBS_DECODER.decode(_array(lax))  # but here
    assert _twice(lax) == _reference(lax) == "payload"


def test_the_memo_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_memo()
    monkeypatch.setattr(sharedpayload, "MEMO_BUDGET", 3 * len(_array(_compact(_payload(vm="vm-000")))))
    for i in range(20):
        assert _shared(_compact(_payload(vm=f"vm-{i:03d}"))) is None
        assert sharedpayload._memo_size <= sharedpayload.MEMO_BUDGET
        assert sharedpayload._memo_size == sum(map(len, sharedpayload._memo))
    assert len(sharedpayload._memo) == 3
    clear_memo()


@given(
    base=st.sampled_from([_payload(), _payload(vm=":", capacity=None), _payload(host=None, capacity={})]),
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.sampled_from(
        [b'"v":1,', b'"vm":":",', b'":":', b" ", b'"a":', b',"":1', b'"vservices":1,', b"{", b"}", b'":',
         b"1e0", b"0", b"01", b".0", b"-", b"true", b"null", b"\t", b"\\u0041", b"\xc3\xa9", b"\xc0\xaf",
         b"\xff", b"\xe2\x82", b"\xed\xa0\x80", b"\x00", b"\x7f", b"]", b"[", b'"', b",",
         b'"observations":[],', b'"capacity":null,', b'"bundle":"x",']
    )), max_size=3),
    warm=st.booleans(),
    top_only=st.booleans(),
)
@settings(max_examples=2000, suppress_health_check=[HealthCheck.too_slow])
def test_the_shared_path_decides_as_the_reference(
    base: dict[str, Any], edits: list[tuple[int, bytes]], warm: bool, top_only: bool
) -> None:
    # warm: the unedited payload went first, so an edit outside its array meets a memo hit;
    # top_only: every edit lands before the array (the array's bytes stay those memoised).
    body = _compact(base)
    clear_memo()
    if warm:
        assert _shared(body) is None
    for pos, piece in edits:
        if top_only:  # just after a '{' or ',' before the array: a repeated name keeps the JSON valid
            cuts = [i + 1 for i in range(body.rindex(b'"observations":')) if body[i : i + 1] in b",{"]
            pos = cuts[pos % len(cuts)]
        else:
            pos %= len(body) + 1
        body = body[:pos] + piece + body[pos:]
    expected = _reference(body)
    assert _shared(body) == expected
    assert _shared(body) == expected  # again: a hit if it was memoised
    assert _outcome(body) == expected


@pytest.mark.parametrize("path,value", [(p, v) for p, values in EDGES for v in values])
def test_every_typed_member_at_its_edge_is_refused_by_the_shared_path(path: str, value: Any) -> None:
    body = _set(path, value)
    assert _twice(body) == _reference(body) is not None


def test_the_shared_path_takes_the_edges_and_what_the_reference_alone_accepts() -> None:
    for path, value in [("interval", 86400), ("observations.0.instance", "a" * 64),
                        ("observations.0.capacity", {}), ("observations.1.capacity.vservices", 2**63 - 1),
                        ("observations.0.host", None)]:
        assert _twice(_set(path, value)) is None, path
    # Declined by the fast path (a space after a quote, an escape), accepted by the reference:
    body = _compact(_payload(vm="Web Server 01"))
    for odd in (body.replace(b'"vm":', b'"vm" :', 1), body.replace(b"Web", b"W\\u0065b", 1)):
        assert sharedpayload.decode_payload_shared(odd, KEY.kid) is None
        assert _twice(odd) is None
