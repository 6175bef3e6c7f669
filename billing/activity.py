"""Evidence reduced to what billing needs: per instance, the hours seen, the hours running, capacities."""

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from protocol.heartbeat import Heartbeat

HOUR = 3600
CapacityKey = tuple[str | None, int | None, int | None]  # (bundle, bandwidth_mbps, vservices); None = absent


def capacity_key(cap: Mapping[str, object]) -> CapacityKey:
    return (cap.get("bundle"), cap.get("bandwidth_mbps"), cap.get("vservices"))  # type: ignore[return-value]


@dataclass
class Activity:
    """A plain container; the collector may fill it from its own hour aggregates.

    - ``active``: instance -> hour starts with a `running` observation (billing-v1.md §2)
    - ``seen``: instance -> hour starts with any observation
    - ``declared``: instance -> capacity key -> observation times declaring it (capacity not null).
      Only read for instances with fixed hours, so a lazy Mapping works.
    """

    active: dict[str, set[int]] = field(default_factory=dict)
    seen: dict[str, set[int]] = field(default_factory=dict)
    declared: Mapping[str, Mapping[CapacityKey, Sequence[int]]] = field(default_factory=dict)
    # Record `declared` only for these instances (None: all); over-use needs it only under fixed licenses.
    declared_for: Collection[str] | None = None

    def add_heartbeat(self, hb: Heartbeat) -> None:
        """Add one heartbeat's observations; the caller has filtered by month and quarantine."""
        t = hb.time
        h = t - t % HOUR
        active, seen = self.active, self.seen
        declared: dict = self.declared  # type: ignore[assignment]
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
