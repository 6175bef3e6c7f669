"""GET /v1/entitlements/{instance}: in force, no license, ended, no platform license, downgraded."""

import time
from typing import Any

import pytest

from collector import db
from collector.accounts import store
from protocol.timefmt import format_time

DAY = 86400


@pytest.fixture
def world(settings: Any, tools: Any) -> dict[str, str]:
    acme = tools.catalog(customers=["c1", "c2"])
    acme["licenses"] += [
        {
            "id": "SL-OLD",
            "customer": "c1",
            "instance": "TR7-0002",
            "model": "payg",
            "unit": "hour",
            "start": "2026-01-01T00:00:00Z",
            "end": "2026-02-01T00:00:00Z",
            "capacity": [],
        },
        {
            "id": "SL-NEXT",
            "customer": "c1",
            "instance": "TR7-0003",
            "model": "payg",
            "unit": "hour",
            "start": "2099-01-01T00:00:00Z",
            "end": None,
            "capacity": [],
        },
        {
            "id": "SL-C2",
            "customer": "c2",
            "instance": "TR7-0004",
            "model": "payg",
            "unit": "hour",
            "start": "2026-01-01T00:00:00Z",
            "end": None,
            "capacity": [],
        },
        {
            "id": "SL-C2F",
            "customer": "c2",
            "instance": "TR7-0005",
            "model": "fixed",
            "unit": "hour",
            "start": "2026-01-01T00:00:00Z",
            "end": None,
            "capacity": [],
        },
    ]
    tools.apply(settings, acme)
    beta = tools.catalog(
        "beta",
        platform_licenses=[
            {"id": "PL-B", "valid_from": "2026-01-01T00:00:00Z", "valid_to": "2026-02-01T00:00:00Z"}
        ],
    )
    beta["licenses"][0].update(id="SL-B1", instance="TR7-B001")
    tools.apply(settings, beta)
    return {
        "acme": tools.token(settings, "acme", "viewer"),
        "beta": tools.token(settings, "beta", "viewer"),
        "vendor": tools.token(settings, None, "vendor"),
    }


def ent(client: Any, tok: str, instance: str) -> dict[str, Any]:
    r = client.get(f"/v1/entitlements/{instance}", headers={"Authorization": f"Bearer {tok}"})
    assert r.status_code == 200, r.text
    return r.json()


def test_answers(client: Any, world: dict[str, str]) -> None:
    ok = ent(client, world["acme"], "TR7-0001")
    assert (ok["entitled"], ok["reason"], ok["license"], ok["account"]) == (True, "ok", "SL-1", "active")
    none = ent(client, world["acme"], "TR7-9999")
    assert (none["entitled"], none["reason"]) == (False, "no_license")
    assert ent(client, world["acme"], "TR7-0002")["reason"] == "license_ended"
    assert ent(client, world["acme"], "TR7-0003")["reason"] == "license_not_started"
    nopl = ent(client, world["beta"], "TR7-B001")
    assert (nopl["entitled"], nopl["reason"]) == (False, "no_platform_license")


def test_downgraded_account_loses_payg_not_fixed(client: Any, settings: Any, world: dict[str, str]) -> None:
    now = int(time.time())
    db.write_tx(settings.engine, lambda c: store.payment_failed(c, "acme", "c2", now - 16 * DAY))
    # No tick has run: the answer follows the clock all the same.
    down = ent(client, world["acme"], "TR7-0004")
    assert (down["entitled"], down["reason"], down["account"]) == (False, "account_downgraded", "downgraded")
    v = ent(client, world["vendor"], "TR7-0004")  # the vendor: entitlement, not payment state
    assert (v["entitled"], v["reason"]) == (False, "provider_suspended") and "account" not in v
    fixed = ent(client, world["acme"], "TR7-0005")
    assert (fixed["entitled"], fixed["reason"]) == (True, "ok")
    assert ent(client, world["acme"], "TR7-0001")["entitled"] is True  # c1 is not affected


def test_overdue_account_keeps_entitlement_during_grace(
    client: Any, settings: Any, world: dict[str, str]
) -> None:
    failed = int(time.time()) - 4 * DAY
    db.write_tx(settings.engine, lambda c: store.payment_failed(c, "acme", "c2", failed))
    a = ent(client, world["acme"], "TR7-0004")
    assert (a["entitled"], a["account"], a["grace_until"]) == (
        True,
        "overdue",
        format_time(failed + 15 * DAY),
    )
    # the vendor sees the entitlement, not the provider's dealings with its customer
    v = ent(client, world["vendor"], "TR7-0004")
    assert v["entitled"] is True and "account" not in v and "grace_until" not in v


def test_tenancy_and_auth(client: Any, world: dict[str, str]) -> None:
    assert ent(client, world["beta"], "TR7-0001")["reason"] == "no_license"  # acme's instance stays hidden
    assert "provider" not in ent(client, world["beta"], "TR7-0001")
    assert ent(client, world["vendor"], "TR7-0001")["entitled"] is True
    assert client.get("/v1/entitlements/TR7-0001").status_code == 401
