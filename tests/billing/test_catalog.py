"""Catalog validation (billing-v1.md §7): strict shape, references, and errors that name the member."""

from copy import deepcopy

import pytest

from billing import CatalogError, load_catalog


def _spec_example(kit):
    """The catalog printed in billing-v1.md §7."""
    return {"provider": {"id": "acme", "name": "Acme MSP", "currency": "EUR"},
            "policy": {"gaps": {"mode": "evidence"}},
            "bundles": ["basic", "pro", "enterprise"],
            "platform_licenses": [{"id": "PL-1", "valid_from": "2026-01-01T00:00:00Z", "valid_to": None}],
            "customers": [{"id": "c1", "name": "Example GmbH",
                           "downgraded": [["2026-11-21T06:30:00Z", "2026-11-23T00:00:00Z"]]}],
            "licenses": [
                {"id": "SL-1", "customer": "c1", "instance": "TR7-0001", "model": "payg", "unit": "hour",
                 "start": "2026-11-01T00:00:00Z", "end": None,
                 "capacity": [{"from": "2026-11-01T00:00:00Z", "bundle": "pro", "bandwidth_mbps": 500,
                               "vservices": 10}]},
                {"id": "SL-2", "customer": "c1", "instance": "TR7-0002", "model": "payg",
                 "unit": "device_day", "pack": "professional", "day_counts": "assigned",
                 "start": "2026-11-03T00:00:00Z", "end": None, "capacity": []}],
            "rates": {"hourly": [{"bundle": "pro", "max_bandwidth_mbps": 1000, "price": "0.0450"}],
                      "monthly": [{"pack": "professional", "price": "12.00"}]}}


def test_the_spec_example_loads(kit):
    cat = load_catalog(_spec_example(kit))
    assert cat.provider == "acme" and cat.currency == "EUR" and cat.gap_mode == "evidence"
    assert [lic.id for lic in cat.licenses] == ["SL-1", "SL-2"]
    assert cat.hourly[0].text == "0.0450" and cat.monthly["professional"].text == "12.00"
    assert load_catalog(cat) is cat


def test_policy_is_optional_and_defaults_to_evidence(kit):
    doc = _spec_example(kit)
    del doc["policy"]
    assert load_catalog(doc).gap_mode == "evidence"


def _set(doc, path, value):
    *parents, last = path
    for p in parents:
        doc = doc[p]
    if value is _DELETE:
        del doc[last]
    elif isinstance(doc, list) and last == len(doc):
        doc.append(value)
    else:
        doc[last] = value


_DELETE = object()

CASES = [
    (["extra"], 1, "extra"),
    (["provider", "currency"], _DELETE, "provider.currency"),
    (["provider", "id"], "", "provider.id"),
    (["policy", "gaps"], {"mode": "bridge"}, "policy.gaps.max_hours"),
    (["policy", "gaps"], {"mode": "bridge", "max_hours": 0}, "policy.gaps.max_hours"),
    (["policy", "gaps"], {"mode": "bridge", "max_hours": True}, "policy.gaps.max_hours"),
    (["policy", "gaps"], {"mode": "guess"}, "policy.gaps.mode"),
    (["bundles", 1], "basic", "bundles[1]"),
    (["platform_licenses", 0, "valid_from"], "2026-01-01", "platform_licenses[0].valid_from"),
    (["platform_licenses", 0, "valid_to"], "2025-01-01T00:00:00Z", "platform_licenses[0].valid_to"),
    (["customers", 0, "downgraded", 0, 1], "2026-11-23T00:00:00.5Z", "customers[0].downgraded[0][1]"),
    (["customers", 0, "downgraded", 0], ["2026-11-21T06:30:00Z"], "customers[0].downgraded[0]"),
    (["customers", 0, "vip"], True, "customers[0].vip"),
    (["licenses", 1, "customer"], "c9", "licenses[1].customer"),
    (["licenses", 1, "id"], "SL-1", "licenses[1].id"),
    (["licenses", 0, "instance"], "TR7 0001", "licenses[0].instance"),
    (["licenses", 0, "model"], "prepaid", "licenses[0].model"),
    (["licenses", 0, "unit"], "minute", "licenses[0].unit"),
    (["licenses", 0, "start"], "2026-11-01T00:00:00+00:00", "licenses[0].start"),
    (["licenses", 0, "end"], "2026-11-01T00:00:00Z", "licenses[0].end"),
    (["licenses", 0, "pack"], "professional", "licenses[0].pack"),
    (["licenses", 1, "pack"], _DELETE, "licenses[1].pack"),
    (["licenses", 1, "day_counts"], _DELETE, "licenses[1].day_counts"),
    (["licenses", 1, "day_counts"], "sometimes", "licenses[1].day_counts"),
    (["licenses", 1, "pack"], "gold", "licenses[1].pack"),
    (["licenses", 0, "capacity", 0, "bundle"], "ultra", "licenses[0].capacity[0].bundle"),
    (["licenses", 0, "capacity", 0, "bandwidth_mbps"], "500", "licenses[0].capacity[0].bandwidth_mbps"),
    (["licenses", 0, "capacity", 0, "vservices"], -1, "licenses[0].capacity[0].vservices"),
    (["licenses", 0, "capacity", 0, "colour"], "red", "licenses[0].capacity[0].colour"),
    (["licenses", 0, "capacity", 1], {"from": "2026-10-01T00:00:00Z", "bundle": "pro"},
     "licenses[0].capacity[1].from"),
    (["rates", "hourly", 0, "price"], "0,045", "rates.hourly[0].price"),
    (["rates", "hourly", 0, "price"], 0.045, "rates.hourly[0].price"),
    (["rates", "hourly", 0, "price"], "NaN", "rates.hourly[0].price"),
    (["rates", "hourly", 0, "price"], "1e-2", "rates.hourly[0].price"),
    (["rates", "hourly", 0, "price"], "0.0450\n", "rates.hourly[0].price"),  # "$" let it through
    (["rates", "monthly", 0, "price"], "25.00\n", "rates.monthly[0].price"),
    (["rates", "monthly", 0, "price"], "1" * 13, "rates.monthly[0].price"),
    (["rates", "hourly", 0, "price"], "0." + "1" * 11, "rates.hourly[0].price"),
    (["rates", "hourly", 0, "bundle"], "gold", "rates.hourly[0].bundle"),
    (["rates", "hourly", 0, "max_bandwidth_mbps"], None, "rates.hourly[0].max_bandwidth_mbps"),
    (["rates", "hourly", 1], {"bundle": "pro", "max_bandwidth_mbps": 1000, "price": "1"}, "rates.hourly[1]"),
    (["rates", "monthly", 1], {"pack": "professional", "price": "1.00"}, "rates.monthly[1].pack"),
    (["rates", "weekly"], [], "rates.weekly"),
]


@pytest.mark.parametrize(("where", "value", "path"), CASES, ids=[c[2] for c in CASES])
def test_errors_name_the_member(kit, where, value, path):
    doc = deepcopy(_spec_example(kit))
    _set(doc, where, value)
    with pytest.raises(CatalogError) as err:
        load_catalog(doc)
    assert err.value.path == path
    assert str(err.value) == f"{path}: {err.value.message}"


def test_the_root_must_be_an_object():
    with pytest.raises(CatalogError) as err:
        load_catalog([])  # type: ignore[arg-type]
    assert err.value.path == "catalog"


def test_capacity_members_are_optional(kit):
    doc = _spec_example(kit)
    doc["licenses"][0]["capacity"] = [{"from": "2026-11-01T00:00:00Z"}]
    entry = load_catalog(doc).licenses[0].capacity[0]
    assert (entry.bundle, entry.bandwidth_mbps, entry.vservices) == (None, None, None)


def test_catalog_error_is_a_value_error():
    assert issubclass(CatalogError, ValueError)
