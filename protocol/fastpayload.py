"""One-pass decode and schema check of a heartbeat payload (msgspec); the reference path judges the rest.

Why msgspec: the collector's CPU per heartbeat is dominated by the signature check and then by
decoding and checking 50 observations. The reference path (stdlib json, then protocol.payload
in Python) costs ~80 us on a 7 kB payload; msgspec decodes into the same dicts while checking
the types in C in ~33 us; pydantic 2's TypeAdapter on the same TypedDicts took ~52 us.

Soundness (tests/protocol/test_strict_fast_paths.py holds it to the reference): this path only
ever *accepts* or *declines*, never rejects. It accepts only what the reference accepts:
- every type and range below (with the instances' characters, instances_ok) is at least as
  narrow as protocol.payload's;
- msgspec drops unknown members and keeps the last of a repeated name, so acceptance also
  needs the count of '":' in the text to equal the members decoded (see
  protocol.strictjson.loads_counted for why equality proves no name is unknown or repeated);
- the rules across members (agent = kid, prev of seq 1, adapters, time) are checked here too.
Anything else (escapes, odd whitespace, any failure at all) declines, and the caller runs the
reference path, which then accepts or names the rule exactly as it always did.

protocol/sharedpayload.py (the collector's ingest) does the same with the observations array
decoded once per distinct text, through a bounded memo, into immutable shared values.
"""

import re
from typing import Annotated, Any, Literal, TypedDict

import msgspec

from protocol.errors import ProtocolError
from protocol.payload import MAX_INT, member_count
from protocol.timefmt import parse_time

Count = Annotated[int, msgspec.Meta(ge=-MAX_INT - 1, le=MAX_INT)]  # a capacity's integers (payload._is_int64)
# 1..64 characters here; that they are all of [A-Za-z0-9._:-] is checked for all instances of a
# payload at once (instances_ok): a pattern here costs one Python regex call per observation,
# 16 of the 27 us of decoding 50.
InstanceName = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
_INSTANCE_CHARS = re.compile(r"[A-Za-z0-9._:,-]*").fullmatch


def instances_ok(instances: list[str]) -> bool:
    """Whether every instance is only [A-Za-z0-9._:-]: one regex over them all joined by ','
    (a ',' inside one makes more separators than joins, and is refused)."""
    if not instances:
        return True
    text = ",".join(instances)
    return text.count(",") == len(instances) - 1 and _INSTANCE_CHARS(text) is not None


class _Capacity(TypedDict, total=False):
    bundle: str
    bandwidth_mbps: Count
    vservices: Count


class _Observation(TypedDict):
    instance: InstanceName
    adapter: str
    vm: str
    host: str | None
    state: Literal["running", "stopped", "paused", "suspended", "unknown"]
    capacity: _Capacity | None


class Poll(TypedDict):
    adapter: str
    platform: Literal["vmware", "hyperv", "kvm", "proxmox", "aws", "azure"]
    ok: bool
    error: str | None


# The top level's member types, shared by both decoders (_Payload here, _Top below).
Seq = Annotated[int, msgspec.Meta(ge=1, le=MAX_INT)]
Prev = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}\Z")]
Interval = Annotated[int, msgspec.Meta(ge=1, le=86400)]


class _Payload(TypedDict):
    v: Literal[1]
    agent: str
    seq: Seq
    prev: Prev
    time: str
    interval: Interval
    polls: list[Poll]
    observations: list[_Observation]


_DECODER = msgspec.json.Decoder(_Payload)
ZERO_PREV = "0" * 64
# A backslash may be an escape hiding a lone surrogate; whitespace after a quote may separate a
# name from its ':' (the count would miss it). Both are left to the reference path. One-byte
# searches are memchr-fast; the two-byte one (6 us on 7 kB) only runs when the byte is there.
_WHITESPACE = (b" ", b"\n", b"\t", b"\r")


def plain(raw: bytes) -> bool:
    """No backslash and no quote followed by whitespace: a text the fast paths may judge."""
    return b"\\" not in raw and all(not (space in raw and b'"' + space in raw) for space in _WHITESPACE)


def decode_payload(raw: bytes, kid: str) -> tuple[dict[str, Any], int] | None:
    """(payload, time as epoch seconds) when the payload certainly holds every rule of §2, else None."""
    if not plain(raw):
        return None
    try:
        # a _Payload TypedDict to mypy, which will not widen it to the plain dict it is at run time
        p: dict[str, Any] = _DECODER.decode(raw)  # type: ignore[assignment]
    except Exception:  # msgspec.DecodeError, UnicodeDecodeError, RecursionError: all decline
        return None
    polls, observations = p["polls"], p["observations"]
    if raw.count(b'":') != member_count(p) or p["agent"] != kid or (p["seq"] == 1 and p["prev"] != ZERO_PREV):
        return None
    names = {poll["adapter"] for poll in polls}
    if len(names) != len(polls) or not {obs["adapter"] for obs in observations} <= names:
        return None
    if not instances_ok([obs["instance"] for obs in observations]):
        return None
    try:
        return p, parse_time(p["time"], "payload.time")
    except ProtocolError:
        return None
