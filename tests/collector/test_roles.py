"""Every bearer-token route against every role: collector/roles.py is the table, the app's routes the list."""

import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from collector import db, registry, roles
from collector import schema as s
from collector.server import create_app
from protocol.timefmt import month_of
from tests._seed import Agent, apply, catalog, enrol, opened, token

NOW = int(time.time())
MONTH = month_of(NOW - 120)
# Values for the path parameters, and the query a route needs to answer 200.
PATH = {"provider": "acme", "month": MONTH, "customer": "c1", "instance": "TR7-0001"}
QUERY = {
    "/v1/log/{provider}/{month}/inclusion": {"index": 0, "size": 2},
    "/v1/log/{provider}/{month}/consistency": {"from": 1, "to": 2},
}


def _app_routes() -> set[tuple[str, str]]:
    """(method, path) of every route that takes a bearer token, from the app's OpenAPI document.

    Collection time, before any fixture: an app on a throwaway database, only for its route list.
    """
    with tempfile.TemporaryDirectory() as tmp, opened(Path(tmp)) as st:
        doc = create_app(st).openapi()
    return {
        (method.upper(), path)
        for path, ops in doc["paths"].items()
        for method, op in ops.items()
        if {"HTTPBearer": []} in op.get("security", [])
    }


ROUTES = sorted(set(roles.API_ROUTES) | _app_routes())


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, dict[str, str]]]:
    """acme with an agent and two heartbeats this month, beta beside it, a token per role."""
    with opened(tmp_path_factory.mktemp("roles")) as st:
        apply(st, catalog("acme"))
        apply(st, catalog("beta", ["z1"], licenses=[]))
        agent = Agent("dc1")
        enrol(st, "acme", agent, NOW - 7200)
        tokens = {r: token(st, None if r == "vendor" else "acme", r) for r in roles.ROLES}
        tokens["beta-admin"] = token(st, "beta", "admin")
        with TestClient(create_app(st)) as client:
            body = "\n".join(agent.beat(NOW - t, {"TR7-0001": "running"}) for t in (120, 60))
            r = client.post("/v1/heartbeats", content=body, headers={"Content-Type": "text/plain"})
            assert [x["status"] for x in r.json()["results"]] == ["accepted", "accepted"]
            yield client, tokens


def call(client: TestClient, method: str, path: str, tok: str, **params: str) -> Any:
    url = path.format(**{**PATH, **params})
    return client.request(
        method, url, params=QUERY.get(path), headers={"Authorization": f"Bearer {tok}"}
    )


def test_every_role_has_a_row() -> None:
    assert set(roles.PERMISSIONS) == set(roles.ROLES)
    granted = set().union(*roles.PERMISSIONS.values())
    assert set(roles.API_ROUTES.values()) <= granted  # no route only nobody may call


def test_the_table_and_the_app_list_the_same_routes() -> None:
    assert set(roles.API_ROUTES) == _app_routes()


@pytest.mark.parametrize("role", roles.ROLES)
@pytest.mark.parametrize(("method", "path"), ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
def test_route_answers_the_roles_of_the_table(world: Any, role: str, method: str, path: str) -> None:
    client, tokens = world
    assert (method, path) in roles.API_ROUTES, f"{method} {path} has no row in collector/roles.py"
    permission = roles.API_ROUTES[(method, path)]
    r = call(client, method, path, tokens[role])
    if roles.allows(role, permission):
        assert r.status_code == 200, (r.status_code, r.text)
    else:
        assert r.status_code == 403
        assert r.json()["detail"] == roles.denial(permission)
        for allowed in roles.roles_with(permission):
            assert allowed in r.json()["detail"]


@pytest.mark.parametrize(
    ("method", "path"),
    [k for k in ROUTES if "{provider}" in k[1]],
    ids=[f"{m} {p}" for m, p in ROUTES if "{provider}" in p],
)
def test_another_providers_admin_is_refused(world: Any, method: str, path: str) -> None:
    client, tokens = world
    r = call(client, method, path, tokens["beta-admin"])
    assert r.status_code == 403 and "not for that provider" in r.json()["detail"]


def test_matrix_a_careful_msp_expects() -> None:
    """The promises docs/collector.md makes, spelled out, so a table edit is a visible decision."""
    can = {role: {k for k, p in roles.API_ROUTES.items() if roles.allows(role, p)} for role in roles.ROLES}
    money = {k for k in roles.API_ROUTES if "/invoices" in k[1] or k[1].endswith("/account")}
    log = {k for k in roles.API_ROUTES if k[1].startswith("/v1/log/")}
    writes = {k for k in roles.API_ROUTES if k[0] != "GET"}
    assert can["admin"] == set(roles.API_ROUTES)
    assert not can["vendor"] & (money | writes)
    assert not can["viewer"] & (log | writes) and money <= can["viewer"]
    assert can["auditor"] == can["viewer"] | log
    assert can["appliance"] == {("GET", "/v1/entitlements/{instance}")}  # what a TR7 appliance asks


def test_a_token_of_an_unknown_role_gets_nothing(world: Any, tmp_path: Any) -> None:
    client, _ = world
    st = client.app.state.settings
    # new_api_token refuses such a role; a row left by hand (or by an older release) must not pass.
    odd = "tr7_" + "x" * 43
    with pytest.raises(registry.RegistryError):
        token(st, None, "root")
    with pytest.raises(registry.RegistryError):
        token(st, "acme", "root")
    db.write_tx(st.engine, lambda c: c.execute(s.api_tokens.insert().values(
        digest=registry.digest(odd), provider=None, role="root", created_at=0)))
    for method, path in roles.API_ROUTES:
        assert call(client, method, path, odd).status_code == 403, path
