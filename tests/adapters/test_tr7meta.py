"""The `tr7.*` metadata every adapter reads: a capacity number the heartbeat could not carry is left
out of capacity, never the reason the whole adapter's observations are dropped."""

import logging

import pytest

from adapters.tr7meta import ProblemLog, recognise


@pytest.mark.parametrize(("text", "kept"), [
    ("500", 500), ("9223372036854775807", 2**63 - 1), ("9223372036854775808", None),
    ("99999999999999999999999", None), ("-1", None), ("1e3", None), ("٣", None), ("", None),
])
def test_capacity_numbers_up_to_2_63_minus_1(
    text: str, kept: int | None, caplog: pytest.LogCaptureFixture
) -> None:
    meta = {"tr7.instance": "TR7-0001", "tr7.bundle": "pro", "tr7.bandwidth_mbps": text}
    with caplog.at_level(logging.WARNING, logger="tr7.adapters"):
        found = recognise(meta, "vm-1", ProblemLog("lab"))
    assert found is not None
    instance, cap = found
    assert instance == "TR7-0001" and cap is not None and cap.bandwidth_mbps == kept and cap.bundle == "pro"
    assert ("left out of capacity" in caplog.text) == (kept is None and text != "")
