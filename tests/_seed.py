"""Seeding shared by the collector and web tests: a signing agent, a catalog, enrolment, API tokens."""

from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from starlette.routing import compile_path

from collector import apidoc, credentials, db, readmodels, registry
from collector.server import create_app
from collector.settings import Settings
from protocol.heartbeat import ZERO_HASH, sign_heartbeat, token_digest
from protocol.keys import AgentKey
from protocol.timefmt import format_time


@contextmanager
def opened(tmp: Path, db_url: str | None = None) -> Iterator[Settings]:
    """A collector's settings on ``db_url`` (default: SQLite in ``tmp``), migrated, for the block."""
    st = Settings(tmp / "data", db_url or f"sqlite:///{tmp / 'collector.db'}", "collector.test")
    st.open()
    try:
        yield st
    finally:
        st.engine.dispose()


# The read routes' templates as patterns: every 200 answer a test receives from one of them is
# checked against the model /openapi.json publishes for it (collector/readmodels.py).
_DOCUMENTED = [(compile_path(path)[0], path) for path in readmodels.RESPONSES]
checked: Counter[str] = Counter()  # answers checked per route, for the test that all were


def _check_documented(response: httpx.Response) -> None:
    request = response.request
    if request.method != "GET" or response.status_code != 200:
        return
    for pattern, path in _DOCUMENTED:
        if pattern.match(request.url.path):
            readmodels.check(path, response.read())
            checked[path] += 1
            return


def _declared_statuses(app: Any) -> Callable[[httpx.Response], None]:
    """A response hook: every status an API route answers must be one /openapi.json declares
    for that route and method (a client generated from it would not expect any other)."""
    paths = app.openapi()["paths"]
    routes = [(r.path_regex, m, r.path_format) for r in apidoc.api_routes(app.routes)
              if r.include_in_schema for m in r.methods]

    def hook(response: httpx.Response) -> None:
        request = response.request
        for regex, method, template in routes:
            if method == request.method and regex.match(request.url.path):
                declared = paths[template][method.lower()]["responses"]
                assert str(response.status_code) in declared, (
                    f"{method} {template} answered {response.status_code}, which /openapi.json does not "
                    f"declare (declared: {sorted(declared)}); add it to the route's responses")
                return

    return hook


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """The app in-process on the `settings` fixture of the conftest that imports this one; every
    answer of a read route is checked against its published schema, and every status of every
    API route against the statuses published for it."""
    app = create_app(settings)
    with TestClient(app) as c:
        c.event_hooks["response"].extend([_check_documented, _declared_statuses(app)])
        yield c


class Agent:
    """A signing agent for tests: keeps its chain (seq, prev) like tr7-agent does."""

    interval = 600  # seconds between polls, unless a beat says otherwise

    def __init__(self, name: str = "agent", key: AgentKey | None = None) -> None:
        self.name = name
        self.key = key or AgentKey.generate()
        self.seq, self.prev = 1, ZERO_HASH

    @property
    def kid(self) -> str:
        return self.key.kid

    def beat(
        self,
        t: int,
        instances: dict[str, str] | None = None,
        vm: str | None = None,
        capacity: dict[str, Any] | None = None,
        interval: int | None = None,
    ) -> str:
        """Sign the next heartbeat at ``t`` observing ``instances`` (instance -> state)."""
        obs = [
            {
                "instance": i,
                "adapter": "a1",
                "vm": vm or f"vm-{i}",
                "host": "h1",
                "state": st,
                "capacity": capacity,
            }
            for i, st in sorted((instances or {}).items())
        ]
        payload = {
            "v": 1,
            "agent": self.kid,
            "seq": self.seq,
            "prev": self.prev,
            "time": format_time(t),
            "interval": interval or self.interval,
            "polls": [{"adapter": "a1", "platform": "kvm", "ok": True, "error": None}],
            "observations": obs,
        }
        token = sign_heartbeat(self.key, payload)
        self.seq, self.prev = self.seq + 1, token_digest(token)
        return token


def catalog(
    provider: str = "acme",
    customers: list[str] | None = None,
    licenses: list[dict[str, Any]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A valid catalog: customers (default c1), one PAYG license SL-1 of c1 on TR7-0001, an hourly rate."""
    doc: dict[str, Any] = {
        "provider": {"id": provider, "name": provider.title(), "currency": "EUR"},
        "policy": {"gaps": {"mode": "evidence"}},
        "bundles": ["basic", "pro"],
        "platform_licenses": [{"id": "PL-1", "valid_from": "2026-01-01T00:00:00Z", "valid_to": None}],
        "customers": [{"id": c, "name": f"Customer {c}", "downgraded": []} for c in (customers or ["c1"])],
        "licenses": licenses
        if licenses is not None
        else [
            {
                "id": "SL-1",
                "customer": "c1",
                "instance": "TR7-0001",
                "model": "payg",
                "unit": "hour",
                "start": "2026-01-01T00:00:00Z",
                "end": None,
                "capacity": [
                    {"from": "2026-01-01T00:00:00Z", "bundle": "pro", "bandwidth_mbps": 500, "vservices": 10}
                ],
            }
        ],
        "rates": {
            "hourly": [{"bundle": "pro", "max_bandwidth_mbps": 1000, "price": "0.0450"}],
            "monthly": [],
        },
    }
    doc.update(extra)
    return doc


def apply(settings: Settings, doc: dict[str, Any], retroactive: bool = False) -> None:
    db.write_tx(settings.engine, lambda c: registry.apply_catalog(c, doc, retroactive=retroactive))


def enrol(settings: Settings, provider: str, agent: Agent, at: int) -> None:
    db.write_tx(
        settings.engine, lambda c: credentials.add_agent(c, provider, agent.name, agent.key.public_b64, at)
    )


def token(settings: Settings, provider: str | None, role: str, at: int = 0) -> str:
    """An API bearer token (role "vendor" with no provider for the vendor's)."""
    return db.write_tx(settings.engine, lambda c: credentials.new_api_token(c, provider, role, at))


def migrate_to(settings: Settings, target: str) -> None:
    """Alembic to ``target`` on the settings' database (up for "head", down otherwise), as
    `tr7-collector migrate` does: the migration tests' round trips."""
    from alembic import command

    cfg = db.alembic_config(settings.engine.url.render_as_string(hide_password=False))
    with settings.engine.connect() as conn:
        cfg.attributes["connection"] = conn
        (command.upgrade if target == "head" else command.downgrade)(cfg, target)
        conn.commit()
