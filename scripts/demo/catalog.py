"""The demo provider's catalog: the simulated month's customers and licenses, plus the live ones."""

import copy
from typing import Any

from protocol.timefmt import format_time, month_bounds, previous_month
from scripts.demo.sims import LiveInstance

PROVIDER = "demo-msp"

# Live instance -> (license id, customer, model, unit); absent = deliberately unlicensed.
LIVE_LICENSES = {
    "TR7-KVM-01": ("SL-N-KVM01", "n1", "payg", "hour"),
    "TR7-KVM-02": ("SL-N-KVM02", "n1", "payg", "hour"),
    "TR7-KVM-03": ("SL-N-KVM03", "n1", "payg", "hour"),
    "TR7-KVM-04": ("SL-N-KVM04F", "n1", "fixed", "hour"),
    "TR7-AWS-01": ("SL-S-AWS01", "s1", "payg", "hour"),
    "TR7-AWS-02": ("SL-S-AWS02D", "s1", "payg", "device_day"),
    "TR7-AWS-03": ("SL-S-AWS03", "s1", "payg", "hour"),
    "TR7-VC-01": ("SL-N-VC01F", "n1", "fixed", "hour"),
    "TR7-VC-02": ("SL-S-VC02", "s1", "payg", "hour"),
    "TR7-VC-03": ("SL-S-VC03", "s1", "payg", "hour"),
}


def _live_license(inst: LiveInstance, start: str, end: str | None) -> dict[str, Any]:
    lic_id, customer, model, unit = LIVE_LICENSES[inst.instance]
    lic: dict[str, Any] = {"id": lic_id, "customer": customer, "instance": inst.instance, "model": model,
                           "unit": unit, "start": start, "end": end, "capacity": []}
    if unit == "device_day":
        lic.update(pack="professional", day_counts="active")
    else:
        lic["capacity"] = [{"from": start, "bundle": inst.bundle, "bandwidth_mbps": inst.bandwidth_mbps,
                            "vservices": inst.vservices}]
    return lic


def build(scenario_catalog: dict[str, Any], current_month: str, live: list[LiveInstance]) -> dict[str, Any]:
    """Merge: the scenario's customers, licenses and rates (its provider renamed) and the live ones.

    The live licenses start with the current month, so the current month's estimate shows the
    live agent's hours; the fixed-term ones end with the next month (a term, not open-ended).
    """
    doc = copy.deepcopy(scenario_catalog)
    m0, m1 = month_bounds(current_month)
    earliest = month_bounds(previous_month(previous_month(current_month)))[0]
    # The simulated customers' open-ended licenses end with the simulated month, so that the
    # current month's estimate is the live agent's alone (an "assigned" device-day license
    # would otherwise bill the whole current month without any heartbeat).
    for lic in doc["licenses"]:
        if lic["end"] is None:
            lic["end"] = format_time(m0)
    doc["provider"] = {"id": PROVIDER, "name": "Demo MSP", "currency": "EUR"}
    doc["platform_licenses"] = [{"id": "PL-DEMO", "valid_from": format_time(earliest), "valid_to": None}]
    doc["customers"] += [
        {"id": "n1", "name": "Northwind Networks GmbH", "downgraded": []},
        {"id": "s1", "name": "Summit Health SA", "downgraded": []},
    ]
    term_end = format_time(month_bounds(format_time(m1)[:7])[1])
    for inst in live:
        if inst.instance in LIVE_LICENSES:
            fixed = LIVE_LICENSES[inst.instance][2] == "fixed"
            doc["licenses"].append(_live_license(inst, format_time(m0), term_end if fixed else None))
    return doc
