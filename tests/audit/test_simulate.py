"""The simulated month holds every situation the tests, the demo and the benchmarks rely on."""

import json
from pathlib import Path

from audit.simulate import Scenario, build_scenario, make_bundle
from audit.verify import verify_bundle
from protocol.heartbeat import parse_unverified, verify_heartbeat


def docs(root: Path, prefix: str = "") -> tuple[dict, dict]:
    return (json.loads((root / prefix / "usage.json").read_text()),
            json.loads((root / prefix / "invoice.json").read_text()))


def test_same_seed_same_month_other_seed_other_keys() -> None:
    a, b = build_scenario(days=2), build_scenario(days=2)
    assert a.leaves == b.leaves and a.catalog == b.catalog
    assert build_scenario(days=2, seed=8).agents[0].key.kid != a.agents[0].key.kid


def test_chains_are_signed_and_linked(scenario: Scenario) -> None:
    keys = {a.key.kid: a.key.public for a in scenario.agents}
    beats = [verify_heartbeat(t, keys) for t in scenario.leaves[:200] + scenario.leaves[-200:]]
    assert {hb.kid for hb in beats} == set(keys)
    anchors = {parse_unverified(t).kid: parse_unverified(t) for t in scenario.anchors}
    dc1 = scenario.agent("dc1-agent")
    first = min((hb for hb in beats if hb.kid == dc1.key.kid), key=lambda hb: hb.seq)
    assert first.prev == anchors[dc1.key.kid].digest  # chained across the month boundary
    assert scenario.agent("cloud-agent").key.kid not in anchors  # enrolled this month: seq 1


def test_billing_situations(pristine: Path) -> None:
    usage, invoice = docs(pristine)
    rows = {r["license"]: r for r in usage["rows"]}
    # Capacity change mid-month: two priced lines for one license, the change hour at the higher price.
    a01 = {(x["bundle"], x["price"]): x["quantity"] for x in invoice["lines"] if x["license"] == "SL-A01"}
    assert set(a01) == {("pro", "0.0450"), ("enterprise", "0.0900")} and sum(a01.values()) == 744
    # Fixed term hands over to PAYG on the 10th on the same instance; weekend nights are stopped.
    assert rows["SL-A02F"]["fixed_hours"] == 9 * 24 - 16 and rows["SL-A02F"]["payg_hours"] == 0
    assert rows["SL-A02F"]["flags"] == ["over_capacity"]
    assert rows["SL-A02P"]["payg_hours"] > 0 and rows["SL-A02P"]["fixed_hours"] == 0
    # Downgraded 20th 06:30 .. 23rd: those 66 hours are active but not billed.
    assert rows["SL-C01"]["active_hours"] - rows["SL-C01"]["payg_hours"] == 66
    # Device-days: assigned from the 3rd (29 days) plus active on 19 days.
    assert invoice["device_days"] == [{"customer": "c2", "pack": "professional", "device_days": 29 + 19,
                                       "months": 2, "price": "12.00", "amount": "24.00"}]
    assert {u["instance"] for u in usage["unlicensed"]} == {"TR7-X99", "TR7-B01"}
    assert rows["SL-B01"]["unknown_hours"] == 2  # its adapter's poll failed for two hours


def test_closed_month_differs_by_late_heartbeats(pristine: Path) -> None:
    _, invoice = docs(pristine)
    _, frozen = docs(pristine, "closed")
    assert frozen["total"] != invoice["total"]


def test_extra_agents_scale_the_log() -> None:
    small = build_scenario(days=1, interval=3600)
    big = build_scenario(days=1, interval=3600, extra_agents=2)
    assert len(big.agents) == 5 and len(big.leaves) == len(small.leaves) + 2 * 24
    assert sum(lic["customer"] == "c4" for lic in big.catalog["licenses"]) == 6


def test_default_scenario_bundle_verifies(tmp_path: Path) -> None:
    scenario = build_scenario()
    assert scenario.interval == 600 and len(scenario.leaves) > 13_000
    root = make_bundle(scenario, tmp_path / "default", close_at_size=len(scenario.leaves) // 2)
    report = verify_bundle(root)
    assert report.ok, [str(f) for f in report.errors]
    assert {f.rule for f in report.notes} == {"chain.gap", "chain.fork"}
