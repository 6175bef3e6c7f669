"""Ingest against a client that signs nothing valid: what it can make the collector keep and say.

Found by an adversarial review: each array index of a bad observation counted as a new rule (a
`rejections` row and a /metrics series per index, forever), and a 4 MiB bad value was echoed
whole into the answer and the log; a body declared as UTF-16 was taken as text/plain.
"""

import json
import time

import sqlalchemy as sa

from collector import schema as s
from collector.rejections import MAX_REASON, rule_of
from protocol.heartbeat import TYP, b64url_encode
from protocol.keys import AgentKey
from protocol.timefmt import format_time


def _obs(state: str) -> dict:
    return {"instance": "TR7-0001", "adapter": "a1", "vm": "vm", "host": "h", "state": state,
            "capacity": None}


def _sign(key: AgentKey, payload: dict) -> str:
    """A compact JWS of any payload (sign_heartbeat refuses to sign one that breaks §2)."""
    header = json.dumps({"alg": "EdDSA", "kid": key.kid, "typ": TYP}, separators=(",", ":"))
    body = json.dumps(payload, separators=(",", ":")).encode()
    signing_input = f"{b64url_encode(header.encode())}.{b64url_encode(body)}"
    return f"{signing_input}.{b64url_encode(key.sign(signing_input.encode()))}"


def _forged(key: AgentKey, seq: int, bad_at: int, when: str | None = None) -> str:
    """A heartbeat signed by a key nobody enrolled, its observation ``bad_at`` of an unknown state."""
    return _sign(key, {
        "v": 1, "agent": key.kid, "seq": seq, "prev": "ab" * 32,
        "time": when or format_time(int(time.time())), "interval": 300,
        "polls": [{"adapter": "a1", "platform": "kvm", "ok": True, "error": None}],
        "observations": [_obs("running")] * bad_at + [_obs("melting")],
    })


def _post(client, lines: list[str], ctype: str | None = "text/plain; charset=us-ascii"):
    headers = {} if ctype is None else {"Content-Type": ctype}
    return client.post("/v1/heartbeats", content="".join(x + "\n" for x in lines).encode(), headers=headers)


def test_one_rule_however_many_indexes(client, settings) -> None:
    key = AgentKey.generate()
    r = _post(client, [_forged(key, n + 2, n) for n in range(40)])
    assert r.status_code == 200
    reasons = [x["reason"] for x in r.json()["results"]]
    assert reasons[7].startswith("payload.observations[7].state")  # the agent still learns where
    with settings.engine.connect() as c:
        rows = c.execute(sa.select(s.rejections.c.rule, s.rejections.c.lines)).all()
    assert [tuple(row) for row in rows] == [("payload.observations[].state", 40)]


def test_rule_of_drops_indexes_only() -> None:
    assert rule_of("payload.polls[12].adapter: unknown") == "payload.polls[].adapter"
    assert rule_of("signature: does not verify") == "signature"
    assert rule_of("payload.observations[3].capacity[0]: x: y") == "payload.observations[].capacity[]"


def test_a_huge_bad_value_is_not_echoed_whole(client, settings, caplog) -> None:
    key = AgentKey.generate()
    line = _forged(key, 2, 0, when="9" * 1_000_000)
    r = _post(client, [line])
    assert r.status_code == 200
    reason = r.json()["results"][0]["reason"]
    assert reason.startswith("payload.time") and len(reason) <= MAX_REASON
    assert len(r.content) < 2 * MAX_REASON
    assert max(len(rec.getMessage()) for rec in caplog.records) < 2000


def test_content_types(client) -> None:
    key = AgentKey.generate()
    for ctype in (None, "text/plain", "text/plain; charset=UTF-8", 'text/plain;charset="us-ascii"'):
        r = _post(client, [_forged(key, 2, 0)], ctype)
        assert r.status_code == 200, ctype
    for ctype in ("text/plain; charset=utf-16", "application/json", "text/csv; charset=us-ascii"):
        r = _post(client, [_forged(key, 2, 0)], ctype)
        assert r.status_code == 415, ctype
        assert "text/plain" in r.json()["detail"] or "US-ASCII" in r.json()["detail"]
