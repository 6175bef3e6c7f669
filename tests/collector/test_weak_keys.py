"""A weak agent key (small-order, mixed-order, non-canonical) is never enrolled: HTTP and CLI."""

import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import sqlalchemy as sa
from nacl.bindings import crypto_core_ed25519_add

from collector import credentials, db
from collector import schema as s
from protocol.keys import AgentKey, kid_of
from protocol.timefmt import format_time

IDENTITY = bytes([1]) + bytes(31)
ORDER4 = bytes(32)


def weak_keys() -> dict[str, str]:
    mixed = crypto_core_ed25519_add(AgentKey.generate().public_raw, ORDER4)
    return {name: base64.b64encode(raw).decode() for name, raw in
            (("identity", IDENTITY), ("order 4", ORDER4), ("mixed order", mixed))}


def test_enrolment_refuses_a_weak_key_and_keeps_the_token(client, settings) -> None:
    now = int(time.time())
    tok = db.write_tx(settings.engine, lambda c: credentials.new_enroll_token(c, "acme", 3600, now))
    for name, key in weak_keys().items():
        r = client.post("/v1/agents/enroll", json={"token": tok, "name": name, "public_key": key})
        assert r.status_code == 400, (name, r.status_code, r.text)
        assert "prime order" in r.json()["detail"]
    with db.read_conn(settings.engine) as c:
        assert credentials.list_agents(c) == []
    # The refused attempts did not use the one-time token up: a good key still enrols with it.
    good = AgentKey.generate()
    r = client.post("/v1/agents/enroll", json={"token": tok, "name": "dc1", "public_key": good.public_b64})
    assert r.status_code == 200 and r.json()["kid"] == good.kid


def test_agent_add_refuses_a_weak_key(tmp_path: Path, db_url: str) -> None:
    env = {**os.environ, "TR7_COLLECTOR_DATA_DIR": str(tmp_path / "data"), "TR7_COLLECTOR_DB": db_url}
    for name, key in weak_keys().items():
        r = subprocess.run(
            [sys.executable, "-m", "collector.cli", "agent", "add", "--provider", "acme", "--name", name,
             "--public-key", key], capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode != 0 and "prime order" in r.stderr, (name, r.returncode, r.stderr)
        assert "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "collector.cli", "agent", "list"], capture_output=True,
                       text=True, env=env, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "[]"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_a_weak_key_already_stored_rejects_its_lines_never_a_500(client, settings, caplog) -> None:
    # A database from before enrolment refused weak keys may hold one: under the identity point
    # anyone "signs" with R = identity, S = 0, so such a line must not be logged or billed.
    kid = kid_of(IDENTITY)
    with settings.engine.begin() as conn:
        conn.execute(s.agents.insert().values(kid=kid, provider="acme", name="old", enrolled_at=0,
                                              public_key=base64.b64encode(IDENTITY).decode()))
    head = {"alg": "EdDSA", "kid": kid, "typ": "tr7-heartbeat+json"}
    body = {"v": 1, "agent": kid, "seq": 1, "prev": "0" * 64, "time": format_time(int(time.time())),
            "interval": 300, "polls": [{"adapter": "a", "platform": "kvm", "ok": True, "error": None}],
            "observations": [{"instance": "TR7-0001", "adapter": "a", "vm": "u", "host": None,
                              "state": "running", "capacity": None}]}
    line = ".".join(_b64url(json.dumps(x, separators=(",", ":")).encode()) for x in (head, body))
    line += "." + _b64url(IDENTITY + bytes(32))
    for _ in range(2):  # and again: a refused key is never remembered as loaded
        caplog.clear()
        r = client.post("/v1/heartbeats", content=line, headers={"Content-Type": "text/plain"})
        assert r.status_code == 200
        assert r.json()["results"] == [{"seq": 1, "status": "rejected",
                                        "reason": f"kid.unknown: no enrolled key with kid {kid}"}]
        assert any("weak_agent_key" in m for m in caplog.messages)
    with settings.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(s.leaves)).scalar_one() == 0
