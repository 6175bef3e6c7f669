"""The hour aggregates an ingest batch writes: one capacity however its members are ordered."""

from collector.aggregates import CapacityKeys, aggregate_cells, cap_key, cells_of_observations
from protocol.sharedpayload import observations_of

DAY = 86400


def _obs(inst: str, state: str, cap: dict | None) -> dict:
    return {
        "instance": inst, "adapter": "a", "vm": "vm-" + inst, "host": None, "state": state, "capacity": cap,
    }


def aggregate(*beats: tuple[int, list[dict]]) -> tuple[dict, dict]:
    """The batch's aggregates as ingest computes them: shared observations, their cells, the OR."""
    keys = CapacityKeys()
    bits, caps = aggregate_cells((t, cells_of_observations(observations_of(obs), keys)) for t, obs in beats)
    return bits, {k: [o for offs in lists for o in offs] for k, lists in caps.items()}


def test_member_order_of_a_capacity_does_not_split_it() -> None:
    day = 20_000 * DAY
    one = {"bundle": "pro", "bandwidth_mbps": 100, "vservices": 2}
    other_order = {"vservices": 2, "bandwidth_mbps": 100, "bundle": "pro"}
    partial = {"bundle": "pro"}
    bits, caps = aggregate(
        (day + 60, [_obs("A", "running", one), _obs("B", "stopped", partial)]),
        (day + 3 * 3600, [_obs("A", "running", other_order), _obs("B", "running", None)]),
    )
    assert bits == {(day, "A", "vm-A"): [1 | 8, 1 | 8], (day, "B", "vm-B"): [8, 1 | 8]}
    assert caps == {
        (day, "A", cap_key(one), 0): [60],
        (day, "A", cap_key(one), 3): [3 * 3600],
        (day, "B", cap_key(partial), 0): [60],
    }
    assert cap_key(partial) == '["pro", null, null]'
