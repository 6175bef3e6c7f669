"""The verifier's hour tallies: sparse for an instance seen in a few hours, arrays past that, same bits."""

import tracemalloc

from audit.recompute import DENSE_AFTER, Tally, tally_activity

M0 = 1_790_812_800  # 2026-10-01T00:00:00Z
HOUR = 3600


def _cells(inst: str, hours: range, running: bool = True, k: int = 1) -> dict:
    seen = {M0 + h * HOUR: k for h in hours}
    return {inst: (seen, dict(seen) if running else {})}


def test_sparse_and_dense_counts_give_the_same_bits_and_subtract_alike() -> None:
    head, minus = Tally(M0), Tally(M0)
    head.merge(_cells("busy", range(0, 700)), {})  # dense past DENSE_AFTER hours
    head.merge(_cells("rare", range(5, 8)), {})
    head.merge(_cells("rare", range(7, 9), running=False), {})
    minus.merge(_cells("busy", range(10, 12), k=-1), {})  # a quarantined heartbeat taken back
    minus.merge(_cells("rare", range(5, 6), k=-1), {})
    assert not isinstance(head.cells["busy"][0], dict) and isinstance(head.cells["rare"][0], dict)
    act = tally_activity([head, minus], ["busy", "rare"])
    busy = sum(1 << h for h in range(700) if h not in (10, 11))
    assert act.seen_bits == {"busy": busy, "rare": sum(1 << h for h in (6, 7, 8))}
    assert act.active_bits == {"busy": busy, "rare": sum(1 << h for h in (6, 7))}
    assert len(range(0, 700)) > DENSE_AFTER


def test_an_instance_seen_once_costs_little_memory() -> None:
    """Two 744-hour arrays for every instance seen once were ~12 kB of memory for ~110 bytes of
    observation: keys anyone can add to agents.json made a 2.8 MB archive take 6.2 GB (a review)."""
    tracemalloc.start()
    try:
        tally = Tally(M0)
        for i in range(20_000):
            tally.merge(_cells(f"TR7-{i:06d}", range(3, 4)), {})
        used = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert used < 20_000 * 1_500, used  # was ~12,000 bytes an instance
