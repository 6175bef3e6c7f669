"""Schema of the heartbeat payload (heartbeat-v1.md §2): exact members, exact types, clear errors."""

import re
from collections.abc import Mapping
from typing import Any

from protocol.errors import ProtocolError
from protocol.timefmt import parse_time

PLATFORMS = frozenset({"vmware", "hyperv", "kvm", "proxmox", "aws", "azure"})
STATES = frozenset({"running", "stopped", "paused", "suspended", "unknown"})
# \Z, not $: `$` also matches before a trailing newline, which the wire forbids.
INSTANCE_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}\Z")
_HEX64_RE = re.compile(r"^[0-9a-f]{64}\Z")
_INSTANCE_FULL = re.compile(r"[A-Za-z0-9._:-]{1,64}").fullmatch  # the same as INSTANCE_RE
# Integers are bounded so that every implementation (and SQL BIGINT) can hold them.
MAX_INT = 2**63 - 1

_TOP = frozenset({"v", "agent", "seq", "prev", "time", "interval", "polls", "observations"})
_POLL = frozenset({"adapter", "platform", "ok", "error"})
_OBS = frozenset({"instance", "adapter", "vm", "host", "state", "capacity"})
_CAP = frozenset({"bundle", "bandwidth_mbps", "vservices"})


def _fail(rule: str, msg: str) -> None:
    raise ProtocolError(rule, msg)


def _is_int(v: Any) -> bool:
    # bool is a subclass of int in Python but not an integer in JSON.
    return type(v) is int and 0 <= v <= MAX_INT


def _is_int64(v: Any) -> bool:
    """A capacity's integers: §2 says only "integer", so any that a signed 64-bit one holds (a
    negative one refused the whole heartbeat, and with it the instance's running hours)."""
    return type(v) is int and -MAX_INT - 1 <= v <= MAX_INT


def _exact(obj: Any, members: frozenset[str], rule: str) -> None:
    if not isinstance(obj, dict):
        _fail(rule, f"must be an object, not {type(obj).__name__}")
    if obj.keys() != members:
        missing = sorted(members - obj.keys())
        unknown = sorted(obj.keys() - members)
        _fail(rule, f"members wrong (missing {missing}, unknown {unknown})")


def _check_capacity(cap: Any, rule: str) -> None:
    if cap is None:
        return
    if not isinstance(cap, dict):
        _fail(rule, "must be an object or null")
    unknown = cap.keys() - _CAP
    if unknown:
        _fail(rule, f"unknown members {sorted(unknown)}")
    if "bundle" in cap and not isinstance(cap["bundle"], str):
        _fail(rule + ".bundle", "must be a string")
    for name in ("bandwidth_mbps", "vservices"):
        if name in cap and not _is_int64(cap[name]):
            _fail(f"{rule}.{name}", "must be an integer from -2^63 to 2^63-1")


def _check_poll(poll: Any, rule: str, names: set[str]) -> None:
    _exact(poll, _POLL, rule)
    # Any string (§2 gives no length): "" is a name another agent may configure. Only unique.
    if not isinstance(poll["adapter"], str):
        _fail(rule + ".adapter", "must be a string")
    if poll["adapter"] in names:
        _fail(rule + ".adapter", f"adapter {poll['adapter']!r} listed twice")
    if not isinstance(poll["platform"], str) or poll["platform"] not in PLATFORMS:
        _fail(rule + ".platform", f"must be one of {sorted(PLATFORMS)}")
    if type(poll["ok"]) is not bool:
        _fail(rule + ".ok", "must be a boolean")
    if poll["error"] is not None and not isinstance(poll["error"], str):
        _fail(rule + ".error", "must be a string or null")


def _check_observation(obs: Any, rule: str, names: set[str]) -> None:
    """Every rule on one observation, in order; raises on the first that fails."""
    _exact(obs, _OBS, rule)
    inst = obs["instance"]
    if not isinstance(inst, str) or not INSTANCE_RE.match(inst):
        _fail(rule + ".instance", "must be 1..64 characters of [A-Za-z0-9._:-]")
    if not isinstance(obs["adapter"], str) or obs["adapter"] not in names:
        _fail(rule + ".adapter", "must name one of polls[].adapter")
    if not isinstance(obs["vm"], str):
        _fail(rule + ".vm", "must be a string")
    if obs["host"] is not None and not isinstance(obs["host"], str):
        _fail(rule + ".host", "must be a string or null")
    if not isinstance(obs["state"], str) or obs["state"] not in STATES:
        _fail(rule + ".state", f"must be one of {sorted(STATES)}")
    _check_capacity(obs["capacity"], rule + ".capacity")


def validate_payload(p: Mapping[str, Any], kid: str) -> None:
    """Raise ProtocolError naming the first member that breaks §2; return None when it holds."""
    _exact(p, _TOP, "payload")
    if type(p["v"]) is not int or p["v"] != 1:
        _fail("payload.v", "must be the integer 1")
    if p["agent"] != kid:
        _fail("payload.agent", "must equal the header's kid")
    seq = p["seq"]
    if not _is_int(seq) or seq < 1:
        _fail("payload.seq", "must be an integer from 1 to 2^63-1")
    prev = p["prev"]
    if not isinstance(prev, str) or not _HEX64_RE.match(prev):
        _fail("payload.prev", "must be 64 lowercase hex characters")
    if seq == 1 and prev != "0" * 64:
        _fail("payload.prev", "must be 64 zeros when seq is 1")
    parse_time(p["time"], "payload.time")
    interval = p["interval"]
    if type(interval) is not int or not 1 <= interval <= 86400:
        _fail("payload.interval", "must be an integer from 1 to 86400")
    polls = p["polls"]
    if not isinstance(polls, list):
        _fail("payload.polls", "must be an array")
    names: set[str] = set()
    for i, poll in enumerate(polls):
        _check_poll(poll, f"payload.polls[{i}]", names)
        names.add(poll["adapter"])
    observations = p["observations"]
    if not isinstance(observations, list):
        _fail("payload.observations", "must be an array")
    # The hot loop of verification (thousands of observations a second): one quick test per
    # observation that implies every rule of _check_observation; only an observation that does
    # not pass it is checked rule by rule, which then names the failing rule (or passes it).
    instance_ok = _INSTANCE_FULL
    states, obs_members, cap_members = STATES, _OBS, _CAP
    for i, obs in enumerate(observations):
        if not (
            type(obs) is dict
            and obs.keys() == obs_members
            and type(inst := obs["instance"]) is str
            and instance_ok(inst)
            and type(ad := obs["adapter"]) is str
            and ad in names
            and type(obs["vm"]) is str
            and (type(host := obs["host"]) is str or host is None)
            and type(st := obs["state"]) is str
            and st in states
            and (
                (cap := obs["capacity"]) is None
                or (
                    type(cap) is dict
                    and cap.keys() <= cap_members
                    and type(cap.get("bundle", "")) is str
                    and type(w := cap.get("bandwidth_mbps", 0)) is int
                    and 0 <= w <= MAX_INT
                    and type(n := cap.get("vservices", 0)) is int
                    and 0 <= n <= MAX_INT
                )
            )
        ):
            _check_observation(obs, f"payload.observations[{i}]", names)


def member_count(p: Mapping[str, Any]) -> int:
    """Members of all objects of a payload validate_payload accepted (see strictjson.loads_counted)."""
    n = len(_TOP) + len(_POLL) * len(p["polls"]) + len(_OBS) * len(p["observations"])
    for obs in p["observations"]:
        cap = obs["capacity"]
        if cap is not None:
            n += len(cap)
    return n
