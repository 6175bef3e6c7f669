"""Evidence reduced to what billing needs: per instance, the hours seen, the hours running, capacities."""

import hashlib
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

from protocol.heartbeat import Heartbeat

HOUR = 3600
CapacityKey = tuple[str | None, int | None, int | None]  # (bundle, bandwidth_mbps, vservices); None = absent

# A vm id or a declared bundle is kept in the collector's aggregate keys as it is when it is at
# most this many characters, without a U+0000 and not spelled like a stand-in; otherwise as its
# stand-in: "sha256:" and the hex SHA-256 of its UTF-8 (key_text). PostgreSQL holds no U+0000 in
# text and a btree key of at most ~2.7 kB: such a vm (any string, heartbeat-v1.md §2) made the
# whole batch a 500, retried for ever. A text spelled like a stand-in (71 characters from
# "sha256:") is replaced by its own, so two different texts never share a form (a vm named like
# another's stand-in hid a clone); other texts from "sha256:" are kept, as before this rule.
# Real ids and bundles are far shorter; the evidence keeps the exact text.
KEY_TEXT_MAX = 256
STAND_IN = "sha256:"
STAND_IN_LEN = len(STAND_IN) + 64


def key_text(text: str) -> str:
    """The form of a vm id or a declared bundle in aggregate keys (see KEY_TEXT_MAX)."""
    if len(text) <= KEY_TEXT_MAX and "\x00" not in text and not is_stand_in(text):
        return text
    return STAND_IN + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def is_stand_in(text: str) -> bool:
    """Whether a text is spelled like key_text's stand-ins (every one of them is)."""
    return len(text) == STAND_IN_LEN and text.startswith(STAND_IN)


def stored_bundles(bundles: Sequence[str]) -> Callable[[str], str]:
    """For declared bundles read back from aggregate keys: the text to rank a stored form by, as
    the declared text itself would rank (billing-v1.md §3): the catalog bundle a stand-in is the
    key_text of, and for a stand-in of no catalog bundle a text that is no catalog bundle
    either (an unknown bundle ranks above all, whatever its stand-in happens to spell)."""
    names = set(bundles)
    by_stand_in = {k: b for b in bundles if (k := key_text(b)) != b}

    def resolve(stored: str) -> str:
        if not is_stand_in(stored):
            return stored  # kept as declared
        bundle = by_stand_in.get(stored)
        if bundle is not None:
            return bundle
        while stored in names:
            stored += "\x00"
        return stored

    return resolve


def capacity_key(cap: Mapping[str, Any]) -> CapacityKey:
    return (cap.get("bundle"), cap.get("bandwidth_mbps"), cap.get("vservices"))


@dataclass
class Activity:
    """A plain container; the collector may fill it from its own hour aggregates.

    - ``active``: instance -> hour starts with a `running` observation (billing-v1.md §2)
    - ``seen``: instance -> hour starts with any observation
    - ``declared``: instance -> capacity key -> observation times declaring it (capacity not null).
      Only read for instances with fixed hours, so a lazy Mapping works.
    - ``active_bits`` / ``seen_bits`` (optional, e.g. filled straight from day bitmaps): instance ->
      int bitset, bit i = the hour starting at ``bits_base + i * HOUR``. An instance's hours are the
      union of both forms; billing.compute works on bitsets, so this form skips a conversion.
    """

    active: dict[str, set[int]] = field(default_factory=dict)
    seen: dict[str, set[int]] = field(default_factory=dict)
    declared: Mapping[str, Mapping[CapacityKey, Sequence[int]]] = field(default_factory=dict)
    # Record `declared` only for these instances (None: all); over-use needs it only under fixed licenses.
    declared_for: Collection[str] | None = None
    active_bits: dict[str, int] = field(default_factory=dict)
    seen_bits: dict[str, int] = field(default_factory=dict)
    bits_base: int | None = None  # an hour start; required when the bitsets are used

    def instances(self) -> set[str]:
        return {*self.active, *self.seen, *self.active_bits, *self.seen_bits}

    def month_masks(self, inst: str, month: "MonthBits") -> tuple[int, int]:
        """(active, seen) of one instance as bitsets of the month's hours; seen includes active."""
        a = month.mask(self.active.get(inst)) | month.shifted(self.active_bits.get(inst), self.bits_base)
        s = month.mask(self.seen.get(inst)) | month.shifted(self.seen_bits.get(inst), self.bits_base)
        return a, s | a

    def add_heartbeat(self, hb: Heartbeat) -> None:
        """Add one heartbeat's observations; the caller has filtered by month and quarantine."""
        t = hb.time
        h = t - t % HOUR
        active, seen = self.active, self.seen
        # filled here only in the dict made by default: a lazy Mapping comes with aggregates, not heartbeats
        declared: dict[str, dict[CapacityKey, list[int]]] = self.declared  # type: ignore[assignment]
        only = self.declared_for
        for o in hb.observations:
            inst = o["instance"]
            s = seen.get(inst)
            if s is None:
                s = seen[inst] = set()
            s.add(h)
            if o["state"] == "running":
                a = active.get(inst)
                if a is None:
                    a = active[inst] = set()
                a.add(h)
            cap = o["capacity"]
            if cap is not None and (only is None or inst in only):
                declared.setdefault(inst, {}).setdefault(capacity_key(cap), []).append(t)

    @classmethod
    def from_heartbeats(cls, heartbeats: Iterable[Heartbeat],
                        declared_for: Collection[str] | None = None) -> "Activity":
        act = cls(declared_for=declared_for)
        for hb in heartbeats:
            act.add_heartbeat(hb)
        return act


class MonthBits:
    """Bitsets of one month's hours: bit i is the hour starting at ``m0 + i * HOUR``."""

    def __init__(self, m0: int, m1: int) -> None:
        self.m0, self.m1, self.n = m0, m1, (m1 - m0) // HOUR
        self.full = (1 << self.n) - 1
        self._bit = {m0 + i * HOUR: 1 << i for i in range(self.n)}
        self._all = frozenset(self._bit)

    def mask(self, hours: Collection[int] | None) -> int:
        """Hour starts to a bitset; hours outside the month are dropped."""
        if not hours:
            return 0
        if not isinstance(hours, set | frozenset):
            hours = set(hours)
        if 2 * len(hours) > self.n:  # dense (an instance up most of the month): add up the gaps
            return self.full ^ sum(map(self._bit.__getitem__, self._all.difference(hours)))
        return sum(map(self._bit.get, hours, repeat(0)))  # distinct bits: the sum is their union

    def shifted(self, bits: int | None, base: int | None) -> int:
        """A bitset based at hour start ``base`` re-based on this month."""
        if not bits:
            return 0
        if base is None or base % HOUR:
            raise ValueError("Activity.bits_base must be an hour start when bitsets are given")
        k = (self.m0 - base) // HOUR
        return (bits >> k if k >= 0 else bits << -k) & self.full

    def period(self, start: int, end: int | None) -> int:
        """The month's hours that belong to [start, end), i.e. overlap it."""
        lo = max(0, (start - self.m0) // HOUR)
        hi = self.n if end is None else min(self.n, -(-(end - self.m0) // HOUR))
        return ((1 << (hi - lo)) - 1) << lo if hi > lo else 0
