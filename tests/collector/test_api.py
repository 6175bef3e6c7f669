"""Enrolment tokens, bearer-token tenancy, and the log's checkpoint and proofs over HTTP."""

import base64
import json
import time

import pytest
import sqlalchemy as sa

from collector import credentials, db, registry
from collector import schema as s
from collector.server import MAX_OTHER_BODY
from collector.tlog import signer
from protocol.keys import AgentKey
from protocol.merkle import MerkleError, leaf_hash, verify_consistency, verify_inclusion
from protocol.note import NoteVerifier, verify_checkpoint
from protocol.timefmt import month_bounds, month_of, previous_month


def _token(settings, provider, role="viewer"):
    now = int(time.time())
    return db.write_tx(settings.engine, lambda c: credentials.new_api_token(c, provider, role, now))


def _auth(tok):
    return {"Authorization": f"Bearer {tok}"}


def test_enrolment_token_single_use_idempotent_and_expiring(client, settings):
    now = int(time.time())
    tok = db.write_tx(settings.engine, lambda c: credentials.new_enroll_token(c, "acme", 3600, now))
    key, other = AgentKey.generate(), AgentKey.generate()
    r = client.post("/v1/agents/enroll", json={"token": tok, "name": "dc1", "public_key": key.public_b64})
    assert r.status_code == 200
    assert r.json()["kid"] == key.kid and r.json()["provider"] == "acme"
    again = client.post("/v1/agents/enroll", json={"token": tok, "name": "dc1", "public_key": key.public_b64})
    assert again.status_code == 200 and again.json() == r.json()
    reused = client.post(
        "/v1/agents/enroll", json={"token": tok, "name": "x", "public_key": other.public_b64}
    )
    assert reused.status_code == 403 and "used" in reused.json()["detail"]
    expired = db.write_tx(settings.engine, lambda c: credentials.new_enroll_token(c, "acme", 60, now - 3600))
    r = client.post("/v1/agents/enroll", json={"token": expired, "name": "x", "public_key": other.public_b64})
    assert r.status_code == 403 and "expired" in r.json()["detail"]
    r = client.post("/v1/agents/enroll", json={"token": "nope", "name": "x", "public_key": other.public_b64})
    assert r.status_code == 403
    r = client.post("/v1/agents/enroll", json={"token": tok, "name": "x", "public_key": "bad"})
    assert r.status_code in (400, 403)
    with db.read_conn(settings.engine) as c:
        assert [a["kid"] for a in credentials.list_agents(c)] == [key.kid]


def test_tenancy_provider_tokens_and_vendor(client, settings, tools):
    for p in ("acme", "beta"):
        db.write_tx(settings.engine, lambda c, p=p: registry.apply_catalog(c, tools.catalog(p)))
    now = int(time.time())
    a, b = tools.Agent("a"), tools.Agent("b")
    tools.enrol(settings, "acme", a, now - 7200)
    tools.enrol(settings, "beta", b, now - 7200)
    body = "\n".join([a.beat(now - 60, {"TR7-0001": "running"}), b.beat(now - 60, {"TR7-0002": "running"})])
    assert (
        client.post("/v1/heartbeats", content=body, headers={"Content-Type": "text/plain"}).status_code == 200
    )
    acme, vendor = _token(settings, "acme"), _token(settings, None, "vendor")
    month = month_of(now - 60)  # the month of the heartbeats
    assert client.get("/v1/providers").status_code == 401
    assert client.get("/v1/providers", headers=_auth("forged")).status_code == 401
    assert [p["id"] for p in client.get("/v1/providers", headers=_auth(acme)).json()] == ["acme"]
    assert [p["id"] for p in client.get("/v1/providers", headers=_auth(vendor)).json()] == ["acme", "beta"]
    for path in ("customers", "licenses", "instances", "agents", "alerts", "invoices", f"invoices/{month}"):
        assert client.get(f"/v1/providers/beta/{path}", headers=_auth(acme)).status_code == 403, path
        assert client.get(f"/v1/providers/acme/{path}", headers=_auth(acme)).status_code == 200, path
    assert client.get(f"/v1/log/beta/{month}/checkpoint", headers=_auth(acme)).status_code == 403
    # An unknown provider has no log to sign, whoever asks (a control character cannot be one)
    for who in ("nobody", "a%0Ab", "a%09b"):
        for tail in ("checkpoint", "inclusion?index=0&size=1", "consistency?from=0&to=0"):
            r = client.get(f"/v1/log/{who}/{month}/{tail}", headers=_auth(vendor))
            assert r.status_code == 404 and "no provider" in r.json()["detail"], (who, tail)
    with db.read_conn(settings.engine) as c:
        assert c.execute(sa.select(s.checkpoints.c.provider).distinct()).scalars().all() == []
    inst = client.get("/v1/providers/beta/instances", headers=_auth(vendor)).json()
    assert [i["instance"] for i in inst["instances"]] == ["TR7-0002"]
    assert client.get(f"/v1/providers/beta/invoices/{month}", headers=_auth(vendor)).status_code == 403
    cust = client.get("/v1/providers/beta/customers", headers=_auth(vendor)).json()
    assert cust and all("downgraded" not in x for x in cust)  # payment state: the provider's own
    assert "downgraded" in client.get("/v1/providers/acme/customers", headers=_auth(acme)).json()[0]
    lic = client.get("/v1/providers/beta/licenses", headers=_auth(vendor))
    assert lic.status_code == 200 and "price" not in lic.text and "amount" not in lic.text
    assert client.get("/v1/providers/acme/invoices", headers=_auth(acme)).json() == [
        {"month": month, "closed": False}
    ]
    inv = client.get(f"/v1/providers/acme/invoices/{month}", headers=_auth(acme)).json()
    assert inv["provider"] == "acme" and inv["lines"][0]["instance"] == "TR7-0001"
    agents = client.get("/v1/providers/acme/agents", headers=_auth(acme)).json()["agents"]
    assert [x["kid"] for x in agents] == [a.kid] and agents[0]["last_heartbeat"] is not None


def test_checkpoint_and_proofs_verify(client, settings, tools):
    month = previous_month(month_of(int(time.time())))
    m0 = month_bounds(month)[0]
    a = tools.Agent()
    tools.enrol(settings, "acme", a, m0 - 86400)
    beats = [a.beat(m0 + 86400 + i * 60) for i in range(7)]
    client.post("/v1/heartbeats", content="\n".join(beats[:3]), headers={"Content-Type": "text/plain"})
    auth = _auth(_token(settings, "acme", "auditor"))
    verifier = NoteVerifier.from_vkey(signer(settings).verifier_key())
    old = verify_checkpoint(client.get(f"/v1/log/acme/{month}/checkpoint", headers=auth).text, verifier)
    assert old.size == 3 and old.origin == f"collector.test/acme/{month}"
    client.post("/v1/heartbeats", content="\n".join(beats[3:]), headers={"Content-Type": "text/plain"})
    new = verify_checkpoint(client.get(f"/v1/log/acme/{month}/checkpoint", headers=auth).text, verifier)
    assert new.size == 7
    for i in range(7):
        r = client.get(f"/v1/log/acme/{month}/inclusion", params={"index": i, "size": 7}, headers=auth).json()
        verify_inclusion(
            leaf_hash(beats[i].encode()), i, 7, [base64.b64decode(h) for h in r["hashes"]], new.root
        )
    r = client.get(f"/v1/log/acme/{month}/consistency", params={"from": 3, "to": 7}, headers=auth).json()
    verify_consistency(3, 7, old.root, new.root, [base64.b64decode(h) for h in r["hashes"]])
    bad = client.get(f"/v1/log/acme/{month}/inclusion", params={"index": 9, "size": 7}, headers=auth)
    assert bad.status_code == 400
    proof = client.get(f"/v1/log/acme/{month}/inclusion", params={"index": 0, "size": 7}, headers=auth).json()
    with pytest.raises(MerkleError):  # the proof of leaf 0 does not prove leaf 1
        verify_inclusion(
            leaf_hash(beats[1].encode()), 0, 7, [base64.b64decode(h) for h in proof["hashes"]], new.root
        )
    assert client.get("/healthz").status_code == 200
    assert client.head("/healthz").status_code == 200
    assert "/v1/heartbeats" in client.get("/openapi.json").json()["paths"]
    # no page that loads a CDN's script on the collector's origin (docs/collector.md, "HTTP API")
    assert client.get("/docs").status_code == 404 and client.get("/redoc").status_code == 404


def test_a_new_provider_id_must_fit_a_log_origin(settings) -> None:
    # `<collector origin>/<provider id>/<YYYY-MM>` is one line of a signed note (heartbeat-v1 §5)
    for bad in ("", "a/b", "a b", "a\nb", "a\x00b", "a\u200bb", "\u2028"):
        with pytest.raises(registry.RegistryError, match="provider id"):
            db.write_tx(settings.engine, lambda c, p=bad: credentials.new_enroll_token(c, p, 3600, 0))
    for good in ("acme", "ACME-2.eu_west", "müller"):
        assert db.write_tx(settings.engine, lambda c, p=good: credentials.new_enroll_token(c, p, 3600, 0))
    with db.read_conn(settings.engine) as c:
        ids = sorted(c.execute(sa.select(s.providers.c.id)).scalars())
    assert ids == ["ACME-2.eu_west", "acme", "müller"]


def test_nul_in_a_path_query_or_login_is_refused_not_a_500(client, settings) -> None:
    # PostgreSQL's text cannot hold U+0000: it was a 500 wherever an id reached a query
    vendor = _auth(_token(settings, None, "vendor"))
    db.write_tx(settings.engine, lambda c: registry.ensure_provider(c, "acme"))
    # the client's hook checks each status against /openapi.json: every API route declares the 400
    for path in ("/v1/log/a%00b/2026-11/checkpoint", "/v1/providers/acme/instances?month=2026-11%00",
                 "/v1/providers/%00/customers", "/ui/p/acme/instances/%00", "/v1/providers?x=%00",
                 "/v1/providers/acme/customers?x=%00", "/metrics?x=%00", "/v1/log/key?x=%00"):
        r = client.get(path, headers=vendor)
        assert r.status_code == 400 and "NUL" in r.json()["detail"], path
    # and the 413 of a body too big, on any route
    r = client.request("GET", "/v1/providers", headers=vendor, content=b"x" * (MAX_OTHER_BODY + 1))
    assert r.status_code == 413
    from collector.web import auth

    with db.read_conn(settings.engine) as c:
        assert auth.authenticate(c, "admin\x00", "secret-password", "") is None
        assert auth.authenticate(c, "", "", "tr7_\x00") is None


def test_months_without_bounds_are_400_and_an_empty_logs_checkpoint_is_not_stored(client, settings) -> None:
    vendor = _auth(_token(settings, None, "vendor"))
    db.write_tx(settings.engine, lambda c: registry.ensure_provider(c, "acme"))
    for month in ("0000-01", "9999-12"):
        for path in (f"/v1/providers/acme/instances?month={month}", f"/v1/log/acme/{month}/checkpoint"):
            assert client.get(path, headers=vendor).status_code == 400, path
    verifier = NoteVerifier.from_vkey(signer(settings).verifier_key())
    for month in ("0001-01", "2026-11", "9999-11"):
        note = client.get(f"/v1/log/acme/{month}/checkpoint", headers=vendor)
        assert verify_checkpoint(note.text, verifier).size == 0
    with db.read_conn(settings.engine) as c:
        assert c.execute(sa.select(sa.func.count()).select_from(s.checkpoints)).scalar() == 0


def test_enrolment_refuses_odd_names_tokens_and_bodies_and_keeps_the_token(client, settings):
    now = int(time.time())
    tok = db.write_tx(settings.engine, lambda c: credentials.new_enroll_token(c, "acme", 3600, now))
    key = AgentKey.generate()

    def enroll(**kw):
        body = json.dumps({"token": tok, "name": "dc1", "public_key": key.public_b64, **kw})  # \ud800 escaped
        return client.post("/v1/agents/enroll", content=body, headers={"Content-Type": "application/json"})

    names = (("", 422), (" ", 400), ("n" * 201, 422), ("dc1\n", 400), ("a\x00b", 400), ("\ud800", 422))
    for name, code in names:
        assert enroll(name=name).status_code == code, name
    for token in ("\ud800", "tr7e_\x00", "t" * 201):
        assert enroll(token=token).status_code in (403, 422), token
    big = b'{"token": "x", "name": "' + b"n" * (1024 * 1024) + b'", "public_key": "k"}'
    r = client.post("/v1/agents/enroll", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    chunks = (b"x" * 65536 for _ in range(20))  # no Content-Length: counted as it streams
    r = client.post("/v1/agents/enroll", content=chunks, headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    # the token is judged first: an unknown one is 403 whatever the key; a good one with a bad key 400
    assert enroll(token="tr7e_nobody", public_key="AAAA").status_code == 403
    assert enroll(public_key="AAAA").status_code == 400
    with db.read_conn(settings.engine) as c:
        assert credentials.list_agents(c) == []
    assert enroll(name="dc1 (kvm, rack 4)").status_code == 200  # the token was never spent
    assert enroll(public_key="AAAA").status_code == 403  # spent now: a bad key learns nothing more


def test_api_tokens_are_listed_by_id_and_revoked(client, settings) -> None:
    tok = _token(settings, None, "vendor")
    with db.read_conn(settings.engine) as c:
        [row] = credentials.list_api_tokens(c)
    assert row["role"] == "vendor" and registry.digest(tok).startswith(row["id"]) and tok not in str(row)
    for bad, said in (("abc", "at least 8 hex"), ("zzzzzzzz", "at least 8 hex"), ("00000000", "no token")):
        with pytest.raises(registry.RegistryError, match=said):
            db.write_tx(settings.engine, lambda c, b=bad: credentials.revoke_api_token(c, b))
    assert client.get("/v1/providers", headers=_auth(tok)).status_code == 200
    db.write_tx(settings.engine, lambda c: credentials.revoke_api_token(c, row["id"].upper()))
    assert client.get("/v1/providers", headers=_auth(tok)).status_code == 401
