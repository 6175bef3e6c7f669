"""One-pass decode and schema check of a heartbeat payload (msgspec); the reference path judges the rest.

Why msgspec: the collector's CPU per heartbeat is dominated by the signature check and then by
decoding and checking 50 observations. The reference path (stdlib json, then protocol.payload
in Python) costs ~80 us on a 7 kB payload; msgspec decodes into the same dicts while checking
the types in C in ~33 us; pydantic 2's TypeAdapter on the same TypedDicts took ~52 us.

Soundness (tests/protocol/test_strict_fast_paths.py holds it to the reference): this path only
ever *accepts* or *declines*, never rejects. It accepts only what the reference accepts:
- every type and range below (with the instances' characters, _instances_ok) is at least as
  narrow as protocol.payload's;
- msgspec drops unknown members and keeps the last of a repeated name, so acceptance also
  needs the count of '":' in the text to equal the members decoded (see
  protocol.strictjson.loads_counted for why equality proves no name is unknown or repeated);
- the rules across members (agent = kid, prev of seq 1, adapters, time) are checked here too.
Anything else (escapes, odd whitespace, any failure at all) declines, and the caller runs the
reference path, which then accepts or names the rule exactly as it always did.

decode_payload_shared (the collector's ingest, below) does the same with the observations array
decoded once per distinct text, through a bounded memo, into immutable shared values.
"""

import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from operator import attrgetter
from typing import Annotated, Any, Literal, TypedDict

import msgspec

from protocol.errors import ProtocolError
from protocol.payload import MAX_INT, member_count
from protocol.timefmt import parse_time

_Count = Annotated[int, msgspec.Meta(ge=0, le=MAX_INT)]
# 1..64 characters here; that they are all of [A-Za-z0-9._:-] is checked for all instances of a
# payload at once (_instances_ok): a pattern here costs one Python regex call per observation,
# 16 of the 27 us of decoding 50.
_Instance = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
_INSTANCE_CHARS = re.compile(r"[A-Za-z0-9._:,-]*").fullmatch


def _instances_ok(instances: list[str]) -> bool:
    """Whether every instance is only [A-Za-z0-9._:-]: one regex over them all joined by ','
    (a ',' inside one makes more separators than joins, and is refused)."""
    if not instances:
        return True
    text = ",".join(instances)
    return text.count(",") == len(instances) - 1 and _INSTANCE_CHARS(text) is not None


class _Capacity(TypedDict, total=False):
    bundle: str
    bandwidth_mbps: _Count
    vservices: _Count


class _Observation(TypedDict):
    instance: _Instance
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


# The top level's member types, shared by both decoders (_Payload here, _Top below).
_Seq = Annotated[int, msgspec.Meta(ge=1, le=MAX_INT)]
_Prev = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}\Z")]
_Interval = Annotated[int, msgspec.Meta(ge=1, le=86400)]


class _Payload(TypedDict):
    v: Literal[1]
    agent: str
    seq: _Seq
    prev: _Prev
    time: str
    interval: _Interval
    polls: list[_Poll]
    observations: list[_Observation]


_DECODER = msgspec.json.Decoder(_Payload)
_ZERO = "0" * 64
# A backslash may be an escape hiding a lone surrogate; whitespace after a quote may separate a
# name from its ':' (the count would miss it). Both are left to the reference path. One-byte
# searches are memchr-fast; the two-byte one (6 us on 7 kB) only runs when the byte is there.
_WHITESPACE = (b" ", b"\n", b"\t", b"\r")


def _plain(raw: bytes) -> bool:
    """No backslash and no quote followed by whitespace: a text the fast paths may judge."""
    return b"\\" not in raw and all(not (space in raw and b'"' + space in raw) for space in _WHITESPACE)


def decode_payload(raw: bytes, kid: str) -> tuple[dict[str, Any], int] | None:
    """(payload, time as epoch seconds) when the payload certainly holds every rule of §2, else None."""
    if not _plain(raw):
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
    if not _instances_ok([obs["instance"] for obs in observations]):
        return None
    try:
        return p, parse_time(p["time"], "payload.time")
    except ProtocolError:
        return None


# --- The collector's ingest: the observations array decoded once per distinct text --------------
#
# An agent's consecutive heartbeats usually carry byte-identical `observations` arrays (the same
# instances in the same states, poll after poll). decode_payload_shared decodes the top level
# with that array left as a msgspec.Raw span, and the span's exact bytes key a bounded
# per-process LRU memo of its typed decode (Observations: frozen, shared by every heartbeat that
# carries those bytes, so nothing may change it; the collector needs only its hour cells).
#
# Soundness: like decode_payload it only accepts or declines, and accepts only what the reference
# path accepts, with the same types and ranges and the same rules across members. The memo key
# is the whole span, so a hit stands for a text that decoded, every type and range checked, when
# it was first seen (msgspec checks a Raw span's JSON syntax but not its UTF-8; the typed decode
# of a miss does; tests hold both). The '":' count is the same proof as above, in two parts: a
# memoised array's own count equals its members (else it is never memoised), and the rest of the
# text must count exactly the top level's and the polls' members. The span starts with '[' and
# ends with ']', so no '":' straddles its edges: the rest counts the whole text's count minus the
# array's, and when the array is the last member (as agents write it) the text before it alone
# (no second pass over the array's bytes).

_CapStr = str | msgspec.UnsetType
_CapInt = _Count | msgspec.UnsetType


class Capacity(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A declared capacity; an absent member is msgspec.UNSET."""

    bundle: _CapStr = msgspec.UNSET
    bandwidth_mbps: _CapInt = msgspec.UNSET
    vservices: _CapInt = msgspec.UNSET


class Observation(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    instance: _Instance
    adapter: str
    vm: str
    host: str | None
    state: Literal["running", "stopped", "paused", "suspended", "unknown"]
    capacity: Capacity | None


class _Top(msgspec.Struct, forbid_unknown_fields=True):
    v: Literal[1]
    agent: str
    seq: _Seq
    prev: _Prev
    time: str
    interval: _Interval
    polls: list[_Poll]
    observations: msgspec.Raw


@dataclass(frozen=True, slots=True, eq=False)  # eq=False: hashed and compared by identity (cheap)
class Observations:
    """A checked `observations` array: immutable, shared by every heartbeat with the same bytes."""

    items: tuple[Observation, ...]
    adapters: frozenset[str]  # every observation's adapter


_TOP_DECODER = msgspec.json.Decoder(_Top)
_OBS_DECODER = msgspec.json.Decoder(tuple[Observation, ...])
_TOP_MEMBERS = len(_Top.__struct_fields__)
_POLL_MEMBERS = len(_Poll.__annotations__)
_OBS_MEMBERS = len(Observation.__struct_fields__)
# Memo bound, in bytes of array text: with its decoded value an array takes about four times its
# text (measured), so ~32 MB a process, ~800 arrays of 50 observations (10 kB).
MEMO_BUDGET = 8 << 20
_memo: OrderedDict[bytes, Observations] = OrderedDict()
_memo_size = 0
_memo_lock = threading.Lock()  # a collector may verify in several threads


def _decode_observations(key: bytes) -> Observations | None:
    """The typed decode of one array text, or None when it might not hold every rule."""
    if key[:1] != b"[" or key[-1:] != b"]":
        return None
    try:
        items = _OBS_DECODER.decode(key)
    except Exception:  # msgspec.DecodeError, UnicodeDecodeError, RecursionError: all decline
        return None
    members = _OBS_MEMBERS * len(items) + sum(
        map(_CAP_MEMBERS.__getitem__, filter(None, map(_capacity, items)))
    )
    if key.count(b'":') != members:  # an unknown or repeated name (or a '":' inside a string)
        return None
    if not _instances_ok(list(map(_instance, items))):
        return None
    return Observations(items, frozenset(map(_adapter, items)))


class _CapMembers(dict[Capacity, int]):
    """Members a capacity has (those not UNSET), by capacity: one capacity is declared again and
    again, so its count is a dict look-up. Bounded: cleared when it grows past 4,096."""

    def __missing__(self, cap: Capacity) -> int:
        if len(self) >= 4096:
            self.clear()
        n = self[cap] = sum(getattr(cap, f) is not msgspec.UNSET for f in Capacity.__struct_fields__)
        return n


_CAP_MEMBERS = _CapMembers()
_capacity = attrgetter("capacity")
_adapter = attrgetter("adapter")
_instance = attrgetter("instance")


def _observations(key: bytes) -> Observations | None:
    global _memo_size
    with _memo_lock:
        hit = _memo.get(key)
        if hit is not None:
            _memo.move_to_end(key)
            return hit
    obs = _decode_observations(key)
    if obs is not None and len(key) <= MEMO_BUDGET:
        with _memo_lock:
            if key not in _memo:
                _memo[key] = obs
                _memo_size += len(key)
                while _memo_size > MEMO_BUDGET:
                    _memo_size -= len(_memo.popitem(last=False)[0])
    return obs


def clear_memo() -> None:
    """Forget every memoised array (tests)."""
    global _memo_size
    with _memo_lock:
        _memo.clear()
        _memo_size = 0


def decode_payload_shared(raw: bytes, kid: str) -> tuple[dict[str, Any], int, Observations] | None:
    """({seq, prev, interval, polls}, time as epoch seconds, shared observations) when the payload
    certainly holds every rule of §2, else None: accepts exactly what decode_payload accepts."""
    if not _plain(raw):
        return None
    try:
        p = _TOP_DECODER.decode(raw)
    except Exception:
        return None
    key = bytes(p.observations)
    obs = _observations(key)
    if obs is None:
        return None
    polls = p.polls
    top = _TOP_MEMBERS + _POLL_MEMBERS * len(polls)
    end = len(raw) - 1
    if raw.endswith(key, 0, end):
        quotes = raw.count(b'":', 0, end - len(key))  # the array's own equal its members
    else:
        quotes = raw.count(b'":') - key.count(b'":')  # the array's own, where it stands
    if quotes != top or p.agent != kid or (p.seq == 1 and p.prev != _ZERO):
        return None
    names = {poll["adapter"] for poll in polls}
    if len(names) != len(polls) or not obs.adapters <= names:
        return None
    try:
        epoch = parse_time(p.time, "payload.time")
    except ProtocolError:
        return None
    return {"seq": p.seq, "prev": p.prev, "interval": p.interval, "polls": polls}, epoch, obs


def observations_of(observations: list[dict[str, Any]]) -> Observations:
    """The Observations of an array the reference path accepted (no check: it holds every rule)."""
    items = tuple(
        Observation(
            o["instance"], o["adapter"], o["vm"], o["host"], o["state"],
            None if (c := o["capacity"]) is None else Capacity(**c),
        )
        for o in observations
    )
    return Observations(items, frozenset(o.adapter for o in items))
