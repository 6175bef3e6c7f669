"""Recomputation shared by bundle writers and the verifier: log checkpoints and billing over lines."""

import json
from array import array
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

from billing import Activity, bill, load_catalog
from billing.activity import HOUR, CapacityKey
from billing.recompute import Cells, by_instance, count_heartbeat
from protocol.chain import anchor_map
from protocol.heartbeat import Heartbeat, parse_unverified
from protocol.merkle import leaf_hash, root_hash
from protocol.note import Checkpoint, NoteSigner, sign_checkpoint


def log_root(leaves: Sequence[str]) -> bytes:
    """RFC 9162 root over the ASCII bytes of each compact JWS (heartbeat-v1.md §5)."""
    return root_hash([leaf_hash(t.encode("ascii")) for t in leaves])


def sign_log_checkpoint(signer: NoteSigner, origin: str, leaves: Sequence[str]) -> str:
    return sign_checkpoint(Checkpoint(origin, len(leaves), log_root(leaves)), signer)


def bill_heartbeats(
    heartbeats: Sequence[Heartbeat | str], anchors: Iterable[Heartbeat], catalog: Mapping[str, Any],
    month: str,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """billing-v1.md over verified heartbeats (or their lines): (usage, invoice) as JSON documents."""
    result = bill(list(heartbeats), load_catalog(catalog), month, anchors=anchor_map(anchors))
    return to_json_doc(result.usage), to_json_doc(result.invoice)


def bill_lines(
    leaves: Sequence[str], anchors: Sequence[str], catalog: Mapping[str, Any], month: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Billing over JWS lines the caller trusts (a collector's own log, a simulation)."""
    return bill_heartbeats(list(leaves), [parse_unverified(t) for t in anchors], catalog, month)


Decl = dict[str, dict[CapacityKey, dict[int, int]]]  # instance -> capacity -> time -> count


tally_heartbeat = count_heartbeat  # the billing's own count: one rule for the collector and the auditor
cells_of = by_instance  # and its regrouping per instance (what Tally.merge takes)


_BITS = bytes.maketrans(b"\x00\x01", b"01")


DENSE_AFTER = 48  # hours an instance is seen before its counts become arrays


class Tally:
    """Observation counts of a month per instance and hour, and capacities.

    An instance's counts are a dict of the hours it was seen until it is seen in more than
    DENSE_AFTER, then arrays (4 bytes an hour): two arrays for every instance seen once were
    ~12 kB of memory for ~110 bytes of observation, and keys anyone can add to agents.json made
    a 2.8 MB archive take 6.2 GB (an auditor's review)."""

    def __init__(self, m0: int) -> None:
        self.m0 = m0
        self.n = 31 * 24  # hours of the longest month; a shorter one leaves the end at zero
        self.cells: dict[str, tuple[array[int], array[int]] | tuple[dict[int, int], dict[int, int]]] = {}
        self.decl: Decl = {}

    def merge(self, cells: Cells, decl: Decl) -> None:
        m0 = self.m0
        for inst, (seen_n, run_n) in cells.items():
            mine = self.cells.get(inst)
            if mine is None:
                mine = self.cells[inst] = ({}, {})
            _add(mine[0], seen_n, m0)
            _add(mine[1], run_n, m0)
            seen = mine[0]
            if isinstance(seen, dict) and len(seen) > DENSE_AFTER:
                self.cells[inst] = (self._dense(seen), self._dense(mine[1]))
        for inst, caps in decl.items():
            mine_c = self.decl.setdefault(inst, {})
            for key, times in caps.items():
                into_t = mine_c.setdefault(key, {})
                for t, k in times.items():
                    into_t[t] = into_t.get(t, 0) + k


    def _dense(self, counts: "dict[int, int] | array[int]") -> "array[int]":
        out = array("i", bytes(4 * self.n))
        _add(out, counts, 0, 1)
        return out


def _add(into: "dict[int, int] | array[int]", part: "Mapping[int, int] | array[int]", base: int,
         step: int = HOUR) -> None:
    """Counts by time (or, with step 1 and base 0, by hour of the month) added into ``into``."""
    items = part.items() if isinstance(part, Mapping) else enumerate(part)
    if isinstance(into, dict):
        for t, k in items:
            at = (t - base) // step
            into[at] = into.get(at, 0) + k
    else:
        for t, k in items:
            into[(t - base) // step] += k


def _bits(counts: "list[array[int] | dict[int, int]]") -> int:
    """Bit i set where the counts at hour i add up to more than zero."""
    if any(isinstance(c, dict) for c in counts):
        total: dict[int, int] = {}
        for c in counts:
            for at, k in (c.items() if isinstance(c, dict) else enumerate(c)):
                if k:
                    total[at] = total.get(at, 0) + k
        return sum(1 << at for at, k in total.items() if k > 0)
    dense = counts[0] if len(counts) == 1 else [sum(x) for x in zip(*counts, strict=True)]
    return int(bytes(c > 0 for c in dense).translate(_BITS)[::-1], 2)


def tally_activity(tallies: Sequence[Tally], only: Collection[str]) -> Activity:
    """billing.Activity of the heartbeats counted in the tallies together (some may be subtractions)."""
    m0 = tallies[0].m0
    seen: dict[str, int] = {}
    active: dict[str, int] = {}
    for inst in sorted({i for t in tallies for i in t.cells}):
        parts = [t.cells[inst] for t in tallies if inst in t.cells]
        seen[inst] = _bits([p[0] for p in parts])
        active[inst] = _bits([p[1] for p in parts])
    declared: dict[str, dict[CapacityKey, list[int]]] = {}
    for inst in {i for t in tallies for i in t.decl}:
        times: dict[CapacityKey, Counter[int]] = {}
        for t in tallies:
            for key, part in t.decl.get(inst, {}).items():
                times.setdefault(key, Counter()).update(part)
        declared[inst] = {k: sorted(x for x, n in c.items() if n > 0) for k, c in times.items()}
    return Activity(declared=declared, declared_for=only, active_bits=active, seen_bits=seen, bits_base=m0)


def to_json_doc(doc: Any) -> dict[str, Any]:
    """A billing document as the JSON it is written as (round-trip: Decimals are already strings)."""
    if hasattr(doc, "to_json"):
        doc = doc.to_json()
    out: dict[str, Any] = json.loads(json.dumps(doc))
    return out


def _canon(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def set_diff(found: Sequence[Any], expected: Sequence[Any]) -> tuple[list[Any], list[Any]]:
    """Members of ``found`` not in ``expected`` and the reverse, as multisets of JSON values."""
    a = Counter(_canon(x) for x in found)
    b = Counter(_canon(x) for x in expected)
    extra = [json.loads(k) for k in sorted((a - b).elements())]
    missing = [json.loads(k) for k in sorted((b - a).elements())]
    return extra, missing


def describe_diff(found: Mapping[str, Any], expected: Mapping[str, Any], limit: int = 3) -> list[str]:
    """Human diagnostics of where a stored billing document differs from the recomputation."""
    out: list[str] = []
    for key in sorted(set(found) | set(expected)):
        f, e = found.get(key), expected.get(key)
        if isinstance(f, list) and isinstance(e, list):
            extra, missing = set_diff(f, e)
            out += [f"{key}: stored but not recomputed: {_canon(x)}" for x in extra[:limit]]
            out += [f"{key}: recomputed but not stored: {_canon(x)}" for x in missing[:limit]]
            more = len(extra) + len(missing) - min(limit, len(extra)) - min(limit, len(missing))
            if more > 0:
                out.append(f"{key}: {more} more differing entries")
        elif _canon(f) != _canon(e):
            out.append(f"{key}: stored {_canon(f)}, recomputed {_canon(e)}")
    return out
