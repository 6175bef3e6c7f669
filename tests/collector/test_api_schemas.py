"""/openapi.json types every read route's answer, and the answers hold to it (collector/readmodels.py).

Every 200 answer of a read route that any test receives is validated against the published model
(the shared client fixture, tests/_seed.py); this module makes sure each route is reached, with a
month that has device-day rows, adjustment lines, a downgraded customer and alerts, for a
provider's token and the vendor's.
"""

import time
from typing import Any

import pytest
from pydantic import ValidationError

from collector import accounting, apidoc, credentials, db, readmodels, registry
from collector.ingest import ingest_lines
from protocol.timefmt import month_bounds, month_of, previous_month
from tests import _seed

H = 3600


def _auth(settings: Any, provider: str | None, role: str = "viewer") -> dict[str, str]:
    tok = db.write_tx(settings.engine, lambda c: credentials.new_api_token(c, provider, role, 0))
    return {"Authorization": f"Bearer {tok}"}


def _catalog(tools: Any) -> dict[str, Any]:
    doc = tools.catalog(customers=["c1", "c2"])
    doc["customers"][1]["downgraded"] = [["2026-01-10T00:00:00Z", None]]
    doc["licenses"].append({
        "id": "SL-2", "customer": "c1", "instance": "TR7-0002", "model": "payg", "unit": "device_day",
        "pack": "professional", "day_counts": "assigned", "start": "2026-01-01T00:00:00Z", "end": None,
        "capacity": [],
    })
    doc["rates"]["monthly"] = [{"pack": "professional", "price": "12.00"}]
    return doc


def test_every_read_route_publishes_its_model_and_its_errors(client) -> None:
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    for path, model in readmodels.RESPONSES.items():
        responses = spec["paths"][path]["get"]["responses"]
        body = responses["200"]["content"]["application/json"]["schema"]
        ref = body.get("items", body)["$ref"]  # lists are arrays of the model
        name = ref.rsplit("/", 1)[1]
        assert name == getattr(model, "__args__", (model,))[0].__name__, path
        assert "additionalProperties" not in schemas[name], name  # v1 may add members
        assert {"401", "403", "404"} <= set(responses), path
        assert all(responses[c]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
                   for c in responses if c not in ("200", "422")), path
    # Every alert type the collector raises is a member of the published union
    alert = schemas["Alerts"]["properties"]["alerts"]["items"]
    assert set(alert["discriminator"]["mapping"]) == {
        "fork", "break", "clock_back", "silent_agent", "fork_across_months", "clock_back_across_months",
        "break_across_months", "clone", "pricing_error", "unlicensed", "over_capacity",
        "no_platform_license", "account_overdue", "account_downgraded",
    }


def test_the_answers_of_every_read_route_hold_to_the_published_models(client, settings, tools) -> None:
    now_month = month_of(int(time.time()))
    m = previous_month(now_month)
    m0 = month_bounds(m)[0]
    db.write_tx(settings.engine, lambda c: registry.apply_catalog(c, _catalog(tools)))
    a = tools.Agent()
    tools.enrol(settings, "acme", a, m0 - 86400)
    # TR7-0001 licensed, TR7-0002 on a device-day license, TR7-0009 unlicensed
    seen = {"TR7-0001": "running", "TR7-0002": "running", "TR7-0009": "running"}
    beats = [a.beat(m0 + i * 1800, seen) for i in range(8)]
    assert {r["status"] for r in ingest_lines(settings.engine, beats[:4])} == {"accepted"}
    db.write_tx(settings.engine, lambda c: accounting.close(c, settings, "acme", m))
    ingest_lines(settings.engine, beats[4:])  # late: adjustment lines on the month after
    before = _seed.checked.copy()
    for auth in (_auth(settings, "acme"), _auth(settings, None, "vendor")):
        assert client.get("/v1/providers", headers=auth).status_code == 200
        monthly = (f"{r}?month={m}" for r in ("instances", "agents", "alerts"))
        for route in ("customers", "licenses", *monthly):
            r = client.get(f"/v1/providers/acme/{route}", headers=auth)
            assert r.status_code == 200, (route, r.text)
    auth = _auth(settings, "acme")
    assert client.get("/v1/providers/acme/invoices", headers=auth).status_code == 200
    closed = client.get(f"/v1/providers/acme/invoices/{m}", headers=auth).json()
    assert closed["device_days"] and closed["lines"]
    after = client.get(f"/v1/providers/acme/invoices/{now_month}", headers=auth).json()
    assert {x["adjusts"] for x in after["lines"]} == {m}
    alerts = client.get(f"/v1/providers/acme/alerts?month={m}", headers=auth).json()["alerts"]
    assert "unlicensed" in {x["type"] for x in alerts}
    customers = client.get("/v1/providers/acme/customers", headers=auth).json()
    assert customers[1]["downgraded"] == [["2026-01-10T00:00:00Z", None]]
    grew = _seed.checked - before
    assert set(grew) == set(readmodels.RESPONSES), set(readmodels.RESPONSES) - set(grew)


@pytest.mark.parametrize(
    "path,body",
    [
        ("/v1/providers", b'[{"id": "acme", "name": "Acme", "currency": "EUR", "vat": "20"}]'),
        ("/v1/providers/{provider}/invoices", b'[{"month": "2026-11"}]'),
        ("/v1/providers/{provider}/alerts",
         b'{"provider": "a", "month": "2026-11", "alerts": [{"type": "meteor"}]}'),
        ("/v1/providers/{provider}/instances",
         b'{"provider": "a", "month": "2026-11", "instances": [{"instance": "x", "days": {"2026-11-01": '
         b'{"active_hours": "3", "seen_hours": 3}}}]}'),
    ],
)
def test_the_check_refuses_a_member_added_dropped_or_retyped(path: str, body: bytes) -> None:
    with pytest.raises(ValidationError):
        readmodels.check(path, body)


def _refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        return set().union(*(({v} if k == "$ref" else _refs(v)) for k, v in node.items()))
    if isinstance(node, list):
        return set().union(*map(_refs, node)) if node else set()
    return set()


def test_the_published_document_is_whole_and_its_errors_are_json(client) -> None:
    """Found by an API review, with schemathesis: the guards' statuses (408, 413, 415, 503) were
    declared on the app's own ten routes only, not on the read API's, accounts' and /metrics' (and
    the tests' status check did not see those routes either); the checkpoint's 401 was declared as
    text/plain, its route's type, where it is JSON; a 422 of the accounts' routes was declared a
    text where the request's validation sends a list; and the dashboard pages were listed as API."""
    doc = client.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    assert {r.removeprefix("#/components/schemas/") for r in _refs(doc)} <= set(schemas)
    assert not [p for p in doc["paths"] if p.startswith("/ui")]
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            for code, response in op["responses"].items():
                if not code.startswith("2"):
                    assert list(response["content"]) == ["application/json"], (method, path, code)
                    assert {"408", "413", "415", "503"} <= set(op["responses"]), (method, path)
    paid = doc["paths"]["/v1/providers/{provider}/customers/{customer}/paid"]["post"]["responses"]
    model = paid["422"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    assert model == "InvalidBody"
    for detail in ("not an e-mail address", [{"loc": ["body"], "msg": "Input should be a valid dictionary",
                                              "type": "dict_type"}]):
        apidoc.InvalidBody.model_validate({"detail": detail})
