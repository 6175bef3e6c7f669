"""The bound of the in-process result caches, fair across tenants: one's many months push out its own."""

from collections.abc import Callable, Hashable, MutableMapping
from typing import Any


def trim(
    cache: MutableMapping[Any, Any],
    key: Any,
    *,
    peers: Callable[[Any], bool],
    owner: Callable[[Any], Hashable],
    per_owner: int,
    total: int,
    weight: Callable[[Any], int] | None = None,
    max_weight: int | None = None,
) -> None:
    """After ``cache[key]`` was stored (the lock held), drop entries, oldest first (the mapping's
    order), among ``peers`` (the entries that share one bound: one kind of result, say).

    Each cache is process-wide and serves every provider of the database. With one plain bound, a
    tenant asking for many `?month=` values pushed out the other tenants' bills, which then took a
    recomputation each: so first an owner holding more than ``per_owner`` entries loses its own
    oldest, then the peers are held to ``total`` entries and, with ``weight``, to ``max_weight``
    (bytes, say: a bill of 2,000 instances is megabytes, one of ten a few kB). The entry just
    stored is never dropped."""
    mine = owner(key)
    same = [k for k in cache if k != key and peers(k)]
    own = [k for k in same if owner(k) == mine]
    for k in own[: max(0, len(own) + 1 - per_owner)]:
        del cache[k]
    same = [k for k in same if k in cache]
    for k in same[: max(0, len(same) + 1 - total)]:
        del cache[k]
    if weight is None or max_weight is None:
        return
    left = [k for k in same if k in cache]
    used = weight(cache[key]) + sum(weight(cache[k]) for k in left)
    for k in left:
        if used <= max_weight:
            break
        used -= weight(cache[k])
        del cache[k]
