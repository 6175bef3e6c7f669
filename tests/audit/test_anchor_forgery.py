"""anchors.jws and agents.json are signed by nothing in v1: what a forger can do there is named.

The honest month: dc1-agent's first October heartbeat does not chain to its last of September (a
host restored at the boundary), a break (§3 rule 4), quarantined. A forger with no key edits only
the unsigned files, and the checkpoint and the log stay as they were.
"""

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from audit.bundle import dumps_json
from audit.recompute import bill_lines
from audit.simulate import Scenario, make_bundle
from audit.verify import verify_bundle
from protocol.heartbeat import parse_unverified, sign_heartbeat, token_digest
from protocol.timefmt import format_time
from tests.audit.conftest import LATE, rehash, unb64url


@pytest.fixture(scope="module")
def restored(scenario: Scenario) -> tuple[Scenario, Scenario, str]:
    """(the honest month, the month with an earlier anchor of dc1, dc1's kid)."""
    dc1 = scenario.agent("dc1-agent")
    real = next(t for t in scenario.anchors if parse_unverified(t).kid == dc1.key.kid)
    body = json.loads(unb64url(real.split(".")[1]))
    at = parse_unverified(real).time
    before = {"seq": body["seq"] - 1, "prev": hashlib.sha256(b"x").hexdigest(), "time": format_time(at - 600)}
    earlier = sign_heartbeat(dc1.key, {**body, **before})
    # the real last of September, chained to the earlier one, and not what October's first names
    last = sign_heartbeat(dc1.key, {**body, "prev": token_digest(earlier), "time": format_time(at + 60)})
    others = [t for t in scenario.anchors if t != real]
    return (dataclasses.replace(scenario, anchors=[*others, last]),
            dataclasses.replace(scenario, anchors=[*others, earlier]), dc1.key.kid)


def _bundle(sc: Scenario, out: Path) -> Path:
    return make_bundle(sc, out, close_at_size=len(sc.leaves) - LATE)


def _of(report: Any, kid: str, rule: str) -> list[str]:
    return [f.message for f in report.notes if f.rule == rule and kid in f.message]


def test_an_earlier_anchor_turns_the_break_into_a_gap_that_says_where_it_is(restored: Any,
                                                                            tmp_path: Path) -> None:
    honest, forged, kid = restored
    first = verify_bundle(_bundle(honest, tmp_path / "honest"))
    assert first.ok and _of(first, kid, "chain.break")
    report = verify_bundle(_bundle(forged, tmp_path / "forged"))
    assert report.ok and not _of(report, kid, "chain.break")  # undetectable from this bundle alone...
    gaps = _of(report, kid, "chain.gap")
    assert len(gaps) == 1 and "at the month's boundary: check that the anchor is the key's last" in gaps[0]


def test_moving_enrolled_at_into_the_month_does_not_hide_a_removed_anchor(restored: Any,
                                                                          tmp_path: Path) -> None:
    honest, _forged, kid = restored
    root = _bundle(honest, tmp_path / "b")
    anchors = [t for t in (root / "anchors.jws").read_text().splitlines() if parse_unverified(t).kid != kid]
    (root / "anchors.jws").write_text("".join(t + "\n" for t in anchors))
    rows = json.loads((root / "agents.json").read_text())
    next(r for r in rows if r["kid"] == kid)["enrolled_at"] = "2026-10-01T00:00:00Z"
    (root / "agents.json").write_text(dumps_json(rows))
    leaves = (root / "heartbeats.jws").read_text().splitlines()
    catalog = json.loads((root / "catalog.json").read_text())
    for prefix, lines in (("", leaves), ("closed/", leaves[:len(leaves) - LATE])):
        usage, invoice = bill_lines(lines, anchors, catalog, "2026-10")
        (root / f"{prefix}usage.json").write_text(dumps_json(usage))
        (root / f"{prefix}invoice.json").write_text(dumps_json(invoice))
    rehash(root)
    report = verify_bundle(root)
    assert report.ok and not _of(report, kid, "chain.break")
    named = _of(report, kid, "chain.unanchored")
    assert len(named) == 1 and "enrolled this month by agents.json (signed by nothing)" in named[0]
