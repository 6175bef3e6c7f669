"""A weak agent key (small-order, mixed-order, non-canonical) is never enrolled: HTTP and CLI."""

import base64
import os
import subprocess
import sys
import time
from pathlib import Path

from nacl.bindings import crypto_core_ed25519_add

from collector import db, registry
from protocol.keys import AgentKey

IDENTITY = bytes([1]) + bytes(31)
ORDER4 = bytes(32)


def weak_keys() -> dict[str, str]:
    mixed = crypto_core_ed25519_add(AgentKey.generate().public_raw, ORDER4)
    return {name: base64.b64encode(raw).decode() for name, raw in
            (("identity", IDENTITY), ("order 4", ORDER4), ("mixed order", mixed))}


def test_enrolment_refuses_a_weak_key_and_keeps_the_token(client, settings) -> None:
    now = int(time.time())
    tok = db.write_tx(settings.engine, lambda c: registry.new_enroll_token(c, "acme", 3600, now))
    for name, key in weak_keys().items():
        r = client.post("/v1/agents/enroll", json={"token": tok, "name": name, "public_key": key})
        assert r.status_code == 400, (name, r.status_code, r.text)
        assert "prime order" in r.json()["detail"]
    with db.read_conn(settings.engine) as c:
        assert registry.list_agents(c) == []
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
