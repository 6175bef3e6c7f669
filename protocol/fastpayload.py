"""One-pass decode and schema check of a heartbeat payload (msgspec); the reference path judges the rest.

Why msgspec: the collector's CPU per heartbeat is dominated by the signature check and then by
decoding and checking 50 observations. The reference path (stdlib json, then protocol.payload
in Python) costs ~80 us on a 7 kB payload; msgspec decodes into the same dicts while checking
the types in C in ~33 us; pydantic 2's TypeAdapter on the same TypedDicts took ~52 us.

Soundness (tests/protocol/test_strict_fast_paths.py holds it to the reference): this path only
ever *accepts* or *declines*, never rejects. It accepts only what the reference accepts:
- every type and range below is at least as narrow as protocol.payload's;
- msgspec drops unknown members and keeps the last of a repeated name, so acceptance also
  needs the count of '":' in the text to equal the members decoded (see
  protocol.strictjson.loads_counted for why equality proves no name is unknown or repeated);
- the rules across members (agent = kid, prev of seq 1, adapters, time) are checked here too.
Anything else (escapes, odd whitespace, any failure at all) declines, and the caller runs the
reference path, which then accepts or names the rule exactly as it always did.
"""

from typing import Annotated, Any, Literal, TypedDict

import msgspec

from protocol.errors import ProtocolError
from protocol.payload import MAX_INT, member_count
from protocol.timefmt import parse_time

_Count = Annotated[int, msgspec.Meta(ge=0, le=MAX_INT)]


class _Capacity(TypedDict, total=False):
    bundle: str
    bandwidth_mbps: _Count
    vservices: _Count


class _Observation(TypedDict):
    instance: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9._:-]{1,64}\Z")]
    adapter: str
    vm: str
    host: str | None
    state: Literal["running", "stopped", "paused", "suspended", "unknown"]
    capacity: _Capacity | None


class _Poll(TypedDict):
    adapter: Annotated[str, msgspec.Meta(min_length=1)]
    platform: Literal["vmware", "hyperv", "kvm", "proxmox", "aws", "azure"]
    ok: bool
    error: str | None


class _Payload(TypedDict):
    v: Literal[1]
    agent: str
    seq: Annotated[int, msgspec.Meta(ge=1, le=MAX_INT)]
    prev: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}\Z")]
    time: str
    interval: Annotated[int, msgspec.Meta(ge=1, le=86400)]
    polls: list[_Poll]
    observations: list[_Observation]


_DECODER = msgspec.json.Decoder(_Payload)
_ZERO = "0" * 64
# A backslash may be an escape hiding a lone surrogate; whitespace after a quote may separate a
# name from its ':' (the count would miss it). Both are left to the reference path. One-byte
# searches are memchr-fast; the two-byte one (6 us on 7 kB) only runs when the byte is there.
_WHITESPACE = (b" ", b"\n", b"\t", b"\r")


def decode_payload(raw: bytes, kid: str) -> tuple[dict[str, Any], int] | None:
    """(payload, time as epoch seconds) when the payload certainly holds every rule of §2, else None."""
    if b"\\" in raw:
        return None
    for space in _WHITESPACE:
        if space in raw and b'"' + space in raw:
            return None
    try:
        p: dict[str, Any] = _DECODER.decode(raw)  # type: ignore[assignment]
    except Exception:  # msgspec.DecodeError, UnicodeDecodeError, RecursionError: all decline
        return None
    polls, observations = p["polls"], p["observations"]
    if raw.count(b'":') != member_count(p) or p["agent"] != kid or (p["seq"] == 1 and p["prev"] != _ZERO):
        return None
    names = {poll["adapter"] for poll in polls}
    if len(names) != len(polls) or not {obs["adapter"] for obs in observations} <= names:
        return None
    try:
        return p, parse_time(p["time"], "payload.time")
    except ProtocolError:
        return None
