"""Recognising a TR7 instance from platform metadata: the `tr7.*` keys, validated, logged once."""

import logging
import re

from adapters.base import Capacity

MAX_INT = 2**63 - 1  # the largest integer heartbeat-v1 §2 takes

log = logging.getLogger("tr7.adapters")

INSTANCE_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}\Z")
KEYS = ("tr7.instance", "tr7.bundle", "tr7.bandwidth_mbps", "tr7.vservices")
_NOTE_LINE = re.compile(r"^\s*(tr7\.[a-z_]+)\s*[:=]\s*(.*?)\s*$")


class ProblemLog:
    """Logs each (vm, problem) once per process, not at every poll."""

    def __init__(self, adapter: str) -> None:
        self.adapter = adapter
        self._seen: set[tuple[str, str]] = set()

    def warn(self, vm: str, problem: str) -> None:
        if (vm, problem) not in self._seen:
            self._seen.add((vm, problem))
            log.warning("adapter %s: vm %s: %s", self.adapter, vm, problem)


def parse_notes(text: str | None) -> dict[str, str]:
    """`tr7.key: value` lines (also `=`) of a free-text description; the first occurrence wins."""
    out: dict[str, str] = {}
    for line in (text or "").splitlines():
        m = _NOTE_LINE.match(line)
        if m and m.group(1) not in out:
            out[m.group(1)] = m.group(2)
    return out


def _int(value: str | None, key: str, vm: str, problems: ProblemLog) -> int | None:
    if value is None or value == "":
        return None
    v = value.strip()
    # Up to 2^63-1, as heartbeat-v1 §2 takes it: a larger one failed the whole heartbeat's
    # check, and so every observation of the adapter, at every poll.
    if v.isdigit() and v.isascii() and len(v) <= 19 and int(v) <= MAX_INT:
        return int(v)
    problems.warn(vm, f"{key}={value!r} is not an integer from 0 to 2^63-1; left out of capacity")
    return None


def recognise(meta: dict[str, str], vm: str, problems: ProblemLog) -> tuple[str, Capacity | None] | None:
    """Return (instance id, declared capacity) when ``meta`` marks a TR7 instance, else None.

    No `tr7.instance`: not ours, silently ignored. A malformed instance id: skipped, logged once.
    A malformed optional member: left out of capacity, logged once.
    """
    instance = meta.get("tr7.instance")
    if instance is None:
        return None
    instance = instance.strip()
    if not INSTANCE_RE.match(instance):
        problems.warn(vm, f"tr7.instance={instance!r} is not 1..64 chars of [A-Za-z0-9._:-]; VM skipped")
        return None
    bundle = (meta.get("tr7.bundle") or "").strip() or None
    cap = Capacity(
        bundle=bundle,
        bandwidth_mbps=_int(meta.get("tr7.bandwidth_mbps"), "tr7.bandwidth_mbps", vm, problems),
        vservices=_int(meta.get("tr7.vservices"), "tr7.vservices", vm, problems),
    )
    return instance, (cap if cap.to_json() else None)
