"""The collector's payload decode: each distinct `observations` text decoded once, then shared."""

import threading
from collections import OrderedDict
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, Literal

import msgspec

from protocol.errors import ProtocolError
from protocol.fastpayload import (
    ZERO_PREV,
    Count,
    InstanceName,
    Interval,
    Poll,
    Prev,
    Seq,
    instances_ok,
    plain,
)
from protocol.timefmt import parse_time

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
# of a miss does; tests hold both). The '":' count is decode_payload's proof (fastpayload), in two
# parts: a memoised array's own count equals its members (else it is never memoised), and the rest
# of the text must count exactly the top level's and the polls' members. The span starts with '[' and
# ends with ']', so no '":' straddles its edges: the rest counts the whole text's count minus the
# array's, and when the array is the last member (as agents write it) the text before it alone
# (no second pass over the array's bytes).

_CapStr = str | msgspec.UnsetType
_CapInt = Count | msgspec.UnsetType


class Capacity(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A declared capacity; an absent member is msgspec.UNSET."""

    bundle: _CapStr = msgspec.UNSET
    bandwidth_mbps: _CapInt = msgspec.UNSET
    vservices: _CapInt = msgspec.UNSET


class Observation(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    instance: InstanceName
    adapter: str
    vm: str
    host: str | None
    state: Literal["running", "stopped", "paused", "suspended", "unknown"]
    capacity: Capacity | None


class _Top(msgspec.Struct, forbid_unknown_fields=True):
    v: Literal[1]
    agent: str
    seq: Seq
    prev: Prev
    time: str
    interval: Interval
    polls: list[Poll]
    observations: msgspec.Raw


@dataclass(frozen=True, slots=True, eq=False)  # eq=False: hashed and compared by identity (cheap)
class Observations:
    """A checked `observations` array: immutable, shared by every heartbeat with the same bytes."""

    items: tuple[Observation, ...]
    adapters: frozenset[str]  # every observation's adapter


_TOP_DECODER = msgspec.json.Decoder(_Top)
_OBS_DECODER = msgspec.json.Decoder(tuple[Observation, ...])
_TOP_MEMBERS = len(_Top.__struct_fields__)
_POLL_MEMBERS = len(Poll.__annotations__)
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
    if not instances_ok(list(map(_instance, items))):
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


def _memo_hit(key: bytes) -> Observations | None:
    with _memo_lock:
        hit = _memo.get(key)
        if hit is not None:
            _memo.move_to_end(key)
        return hit


def _observations(key: bytes) -> Observations | None:
    global _memo_size
    hit = _memo_hit(key)
    if hit is not None:
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
    _recent.clear()


# Each key's last array, by kid: a hit is one comparison of the bytes (~0.1 us) where the memo's
# look-up hashes them (~1.8 us for 7 kB). Holds only (key, value) pairs that the memo holds or
# held, or that just decoded; bounded by count: ~1,000 arrays of ~8 kB.
RECENT_KEYS = 1024
_recent: dict[str, tuple[bytes, Observations]] = {}


def _known(kid: str, key: bytes) -> Observations | None:
    """The memoised decode of ``key`` (an array text), checking the key's last array first."""
    mine = _recent.get(kid)
    if mine is not None and mine[0] == key:
        return mine[1]
    return _memo_hit(key)


def _recent_put(kid: str, key: bytes, obs: Observations) -> None:
    if len(_recent) >= RECENT_KEYS and kid not in _recent:
        _recent.clear()
    _recent[kid] = (key, obs)


_OBS_MEMBER = b'"observations":'


def _last_array(raw: bytes) -> bytes | None:
    """The text after the first `"observations":` up to the closing '}' that ends the payload, when
    it looks like an array: the memo's key when the array is the last member, as agents write it.

    On a memo hit the top level is decoded with that text replaced by `[]` (~1 us instead of ~6
    for msgspec to skip a 7 kB array): the same members as the decode of the whole text. Sound
    because a hit is one complete JSON array (it decoded alone when first seen) in which no
    '"observations":' can stand (only known names are memoised, and in valid JSON a string
    followed by ':' is a name), so the first one in the text is the only one, the member that
    holds it; and, in a text without a backslash, a '"' either starts a string or ends one: if
    the text before that member ends inside a string, the replaced text is not JSON either and
    fails to decode (declined, as the whole would have been). Swapping one valid value for
    another at the same place keeps the text valid or invalid, with the same other members."""
    at = raw.find(_OBS_MEMBER)  # the first, found in the short top level (see below)
    if at < 0 or raw[-2:] != b"]}":
        return None
    key = raw[at + len(_OBS_MEMBER) : -1]
    return key if key[:1] == b"[" else None


def _decode_top(text: bytes) -> "_Top | None":
    try:
        return _TOP_DECODER.decode(text)
    except Exception:  # msgspec.DecodeError, UnicodeDecodeError, RecursionError: all decline
        return None


def decode_payload_shared(raw: bytes, kid: str) -> tuple[dict[str, Any], int, Observations] | None:
    """({seq, prev, interval, polls}, time as epoch seconds, shared observations) when the payload
    certainly holds every rule of §2, else None: accepts exactly what decode_payload accepts."""
    last = _last_array(raw)
    obs = None if last is None else _known(kid, last)
    if last is not None and obs is not None:
        head = raw[: len(raw) - len(last) - 1]
        # Only the top level's text is searched: a known array is plain (it was found in a plain
        # text), and neither of its edges ('[' after ':', ']' before '}') can complete a '"' and
        # whitespace pair. Decoded with the array replaced by an empty one (_last_array).
        p = _decode_top(head + b"[]}") if plain(head) else None
        key = last
    else:
        p = _decode_top(raw) if plain(raw) else None
        if p is None:
            return None
        key = bytes(p.observations)
        if key == last:
            key = last  # the same bytes, whose hash the look-up above computed already
        obs = _observations(key)
    if p is None or obs is None:
        return None
    _recent_put(kid, key, obs)
    polls = p.polls
    top = _TOP_MEMBERS + _POLL_MEMBERS * len(polls)
    end = len(raw) - 1
    if raw.endswith(key, 0, end):
        quotes = raw.count(b'":', 0, end - len(key))  # the array's own equal its members
    else:
        quotes = raw.count(b'":') - key.count(b'":')  # the array's own, where it stands
    if quotes != top or p.agent != kid or (p.seq == 1 and p.prev != ZERO_PREV):
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
