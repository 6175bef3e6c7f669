"""POST /v1/heartbeats: per-line outcomes, 4xx for bad requests, idempotency, nothing stored wrongly."""

import gzip
import json
import time

import lz4.frame
import sqlalchemy as sa

from collector import schema as s
from protocol.heartbeat import b64url_encode
from protocol.timefmt import month_bounds, month_of, previous_month

H = 3600


def _post(client, lines, **kw):
    body = "".join(line + "\n" for line in lines).encode()
    return client.post(
        "/v1/heartbeats", content=body, headers={"Content-Type": "text/plain; charset=us-ascii"}, **kw
    )


def _count(settings, table=s.leaves) -> int:
    with settings.engine.connect() as c:
        return int(c.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def test_accept_then_duplicate_and_replay_is_idempotent(client, settings, tools):
    a = tools.Agent()
    base = month_bounds(previous_month(month_of(int(time.time()))))[0] + 86400  # all in one month
    tools.enrol(settings, "acme", a, base - 10 * H)
    batch = [a.beat(base + i * 600, {"TR7-1": "running"}) for i in range(5)]
    r = _post(client, batch)
    assert r.status_code == 200
    assert [x["status"] for x in r.json()["results"]] == ["accepted"] * 5
    assert [x["seq"] for x in r.json()["results"]] == [1, 2, 3, 4, 5]
    again = _post(client, [*batch, batch[0]])
    assert [x["status"] for x in again.json()["results"]] == ["duplicate"] * 6
    assert _count(settings) == 5
    with settings.engine.connect() as c:
        assert sorted(c.execute(sa.select(s.leaves.c.idx)).scalars()) == [0, 1, 2, 3, 4]


def test_same_line_twice_in_one_batch(client, settings, tools):
    a = tools.Agent()
    now = int(time.time())
    tools.enrol(settings, "acme", a, now - H)
    t = a.beat(now - 60, {"TR7-1": "running"})
    r = _post(client, [t, t])
    assert [x["status"] for x in r.json()["results"]] == ["accepted", "duplicate"]
    assert _count(settings) == 1


def test_rejections_name_the_rule_and_store_nothing(client, settings, tools):
    now = int(time.time())
    good, stranger, late_enrolled, revoked = (
        tools.Agent("g"),
        tools.Agent("x"),
        tools.Agent("l"),
        tools.Agent("r"),
    )
    tools.enrol(settings, "acme", good, now - 10 * H)
    tools.enrol(settings, "acme", late_enrolled, now - H)
    tools.enrol(settings, "acme", revoked, now - 10 * H)
    from collector import credentials, db

    db.write_tx(settings.engine, lambda c: credentials.revoke_agent(c, revoked.kid, now - 2 * H, now))
    ok = good.beat(now - 100, {"TR7-1": "running"})
    h, p, sig = good.beat(now - 50).split(".")
    forged = f"{h}.{p}.{sig[:-2]}{'AA' if sig[-2:] != 'AA' else 'BA'}"
    future = good.beat(now + 400)
    unknown = stranger.beat(now - 100)
    before = late_enrolled.beat(now - 2 * H)
    after_revocation = revoked.beat(now - H)
    garbage = "not-a-jws"
    r = _post(client, [ok, forged, future, unknown, before, after_revocation, garbage])
    assert r.status_code == 200
    res = r.json()["results"]
    assert [x["status"] for x in res] == ["accepted"] + ["rejected"] * 6
    reasons = [x["reason"] for x in res[1:]]
    assert reasons[0].startswith("signature")
    assert reasons[1].startswith("time.future")
    assert reasons[2].startswith("kid.unknown")
    assert reasons[3].startswith("key.window") and "enrolment" in reasons[3]
    assert reasons[4].startswith("key.window") and "revocation" in reasons[4]
    assert reasons[5].startswith("jws.format")
    assert "seq" not in res[6] and res[1]["seq"] == 2 and res[3]["seq"] == 1
    # The body is written by msgspec (collector/server.py): byte for byte the compact UTF-8 JSON
    # that Starlette's JSONResponse wrote before, which agents and scripts already read.
    assert r.headers["content-type"] == "application/json"
    assert r.content == json.dumps(r.json(), separators=(",", ":"), ensure_ascii=False).encode()
    assert _count(settings) == 1
    with settings.engine.connect() as c:
        assert set(c.execute(sa.select(s.days.c.instance)).scalars()) == {"TR7-1"}


def test_payload_that_breaks_the_schema_is_rejected(client, settings, tools):
    import base64
    import json

    a = tools.Agent()
    now = int(time.time())
    tools.enrol(settings, "acme", a, now - H)
    h, p, _ = a.beat(now - 10).split(".")
    payload = json.loads(base64.urlsafe_b64decode(p + "=="))
    payload["extra"] = 1
    body = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
    signing_input = f"{h}.{body}"
    sig = base64.urlsafe_b64encode(a.key.sign(signing_input.encode())).rstrip(b"=").decode()
    r = _post(client, [f"{signing_input}.{sig}"])
    assert r.json()["results"][0]["status"] == "rejected"
    assert r.json()["results"][0]["reason"].startswith("payload")
    assert _count(settings) == 0


def test_bad_requests_are_4xx_never_500(client, settings, tools):
    a = tools.Agent()
    now = int(time.time())
    tools.enrol(settings, "acme", a, now - H)
    hdr = {"Content-Type": "text/plain"}
    assert client.post("/v1/heartbeats", content="é\n".encode(), headers=hdr).status_code == 400
    assert client.post("/v1/heartbeats", content=b"", headers=hdr).status_code == 400
    assert (
        client.post("/v1/heartbeats", content=b"x", headers={"Content-Type": "application/json"}).status_code
        == 415
    )
    gz = {"Content-Type": "text/plain", "Content-Encoding": "gzip"}
    assert client.post("/v1/heartbeats", content=b"not gzip", headers=gz).status_code == 400
    too_many = ("x\n" * 5001).encode()
    assert client.post("/v1/heartbeats", content=too_many, headers=hdr).status_code == 413
    huge = b"a" * (16 * 1024 * 1024 + 1)
    assert client.post("/v1/heartbeats", content=huge, headers=hdr).status_code == 413
    # size is judged before the characters: a non-ASCII byte early in a huge body is still a 413
    assert client.post("/v1/heartbeats", content=b"\xe9" + huge, headers=hdr).status_code == 413
    bomb = gzip.compress(b"a" * (16 * 1024 * 1024 + 10))  # small on the wire, too big inflated
    assert client.post("/v1/heartbeats", content=bomb, headers=gz).status_code == 413
    lfs = gzip.compress(b"\n" * (16 * 1024 * 1024 - 1), 9)  # 16 kB: 16.7 million empty lines
    r = client.post("/v1/heartbeats", content=lfs, headers=gz)
    assert r.status_code == 413 and r.json()["detail"] == "at most 5000 heartbeats per request"
    assert _count(settings) == 0
    # a gzip body within limits is fine, each of its members (RFC 1952: a series of members)
    two = [a.beat(now - i, {"TR7-1": "running"}) for i in (9, 8)]
    ok = b"".join(gzip.compress((line + "\n").encode()) for line in two)
    r = client.post("/v1/heartbeats", content=ok, headers=gz)
    assert r.status_code == 200 and [x["status"] for x in r.json()["results"]] == ["accepted"] * 2
    # §4 bounds the body uncompressed: 16 MiB sent as stored gzip blocks is larger on the wire, and
    # allowed (it got a 413); a byte more inflated is not. Found by an interop review.
    line = a.beat(now - 6, {"TR7-1": "running"}) + "\n"
    full = (line + "x" * (16 * 1024 * 1024 - len(line) - 1) + "\n").encode()
    stored = gzip.compress(full, 0)
    assert len(full) == 16 * 1024 * 1024 < len(stored)
    r = client.post("/v1/heartbeats", content=stored, headers=gz)
    assert r.status_code == 200 and [x["status"] for x in r.json()["results"]] == ["accepted", "rejected"]
    r = client.post("/v1/heartbeats", content=gzip.compress(full + b"\n", 0), headers=gz)
    assert r.status_code == 413 and "uncompressed" in r.json()["detail"]
    # bytes after the last member are not a member: refused, not ignored
    late = gzip.compress((a.beat(now - 7, {"TR7-1": "running"}) + "\n").encode()) + b"junk"
    assert client.post("/v1/heartbeats", content=late, headers=gz).status_code == 400
    # empty members, each a new inflater on the event loop: 838,860 fit in 16 MiB
    empties = gzip.compress(b"") * 65 + gzip.compress((a.beat(now - 7, {"TR7-1": "running"}) + "\n").encode())
    r = client.post("/v1/heartbeats", content=empties, headers=gz)
    assert r.status_code == 400 and "more than 64 gzip members" in r.json()["detail"]
    assert _count(settings) == 3
    # JSON nested past the decoder's recursion limit (payload, then header) is that line's
    # rejection, not a 500 for the whole batch
    head, deep = two[0].split(".")[0], b64url_encode(b"[" * 5000 + b"]" * 5000)
    deep_head = b64url_encode(b'{"a":' * 3000 + b"1" + b"}" * 3000)
    for t, line in ((6, f"{head}.{deep}.{'A' * 86}"), (5, f"{deep_head}.{deep}.{'A' * 86}")):
        r = _post(client, [line, a.beat(now - t, {"TR7-1": "running"})])
        assert [x["status"] for x in r.json()["results"]] == ["rejected", "accepted"]
        assert "nested too deeply" in r.json()["results"][0]["reason"]
    # CRLF ends a line as LF does, and the last line needs no end (chunking: test_bodylines.py)
    crlf = a.beat(now - 4, {"TR7-1": "running"}) + "\r\n" + a.beat(now - 3, {"TR7-1": "running"})
    r = client.post("/v1/heartbeats", content=crlf.encode(), headers=hdr)
    assert [x["status"] for x in r.json()["results"]] == ["accepted", "accepted"]


def test_leaf_index_is_per_provider_month(client, settings, tools):
    a, b = tools.Agent("a"), tools.Agent("b")
    tools.enrol(settings, "acme", a, 0)
    tools.enrol(settings, "other", b, 0)
    from protocol.timefmt import parse_time

    t_oct, t_nov = parse_time("2026-10-31T23:50:00Z"), parse_time("2026-11-01T00:10:00Z")
    r = _post(client, [a.beat(t_oct), a.beat(t_nov), b.beat(t_nov), b.beat(t_nov + 60)])
    assert [x["status"] for x in r.json()["results"]] == ["accepted"] * 4
    with settings.engine.connect() as c:
        rows = sorted(c.execute(sa.select(s.leaves.c.provider, s.leaves.c.month, s.leaves.c.idx)).all())
    assert [tuple(r) for r in rows] == [
        ("acme", "2026-10", 0),
        ("acme", "2026-11", 0),
        ("other", "2026-11", 0),
        ("other", "2026-11", 1),
    ]


def test_evidence_is_stored_losslessly_and_compressed(client, settings, tools):
    # Raw evidence is kept exactly; the row holds a standard LZ4 frame of the text on both
    # databases (collector/jwsstore.py; bytea on PostgreSQL, migration 0013).
    a = tools.Agent()
    now = int(time.time())
    tools.enrol(settings, "acme", a, now - H)
    line = a.beat(now - 60, {f"TR7-{i:04d}": "running" for i in range(60)})
    assert len(line) > 4000  # past PostgreSQL's TOAST threshold, as text
    assert [x["status"] for x in _post(client, [line]).json()["results"]] == ["accepted"]
    with settings.engine.connect() as c:
        assert c.execute(sa.select(s.leaves.c.jws)).scalar_one() == line
        raw = bytes(c.exec_driver_sql("SELECT jws FROM leaves").scalar_one())
        assert raw[:4] == b"\x04\x22\x4d\x18" and len(raw) < len(line) / 2  # the frame's magic
        assert lz4.frame.decompress(raw).decode("ascii") == line
        if c.dialect.name == "postgresql":  # the older rows' text stays TOAST-compressed with lz4
            method = c.execute(sa.text(
                "SELECT attcompression FROM pg_attribute"
                " WHERE attrelid = 'leaves'::regclass AND attname = 'jws'"
            )).scalar_one()
            assert method == "l"
    if settings.engine.dialect.name == "sqlite":
        # A database written before compression holds text: it reads back the same, as evidence.
        with settings.engine.begin() as c:
            c.exec_driver_sql("UPDATE leaves SET jws = ?", (line,))
        with settings.engine.connect() as c:
            assert c.exec_driver_sql("SELECT typeof(jws) FROM leaves").scalar_one() == "text"
            assert c.execute(sa.select(s.leaves.c.jws)).scalar_one() == line


def test_a_revocation_committed_during_verification_rejects_what_follows_it(settings, tools, monkeypatch):
    """The key's window is read again in the write transaction: a revocation committed while the
    batch was verified let lines timed after it be logged, and the month's bundle failed verify."""
    from collector import credentials, db, ingest
    from collector import schema as s

    now = int(time.time())
    a = tools.Agent("a")
    tools.enrol(settings, "acme", a, now - 10 * H)
    lines = [a.beat(now - 600 + 60 * i, {"TR7-1": "running"}) for i in range(10)]
    cut = now - 600 + 60 * 5  # lines 0..5 at or before it, 6..9 after it
    real = ingest.write_tx

    def revoked_meanwhile(engine, fn):
        db.write_tx(engine, lambda c: credentials.revoke_agent(c, a.kid, cut, now))  # another process
        return real(engine, fn)

    monkeypatch.setattr(ingest, "write_tx", revoked_meanwhile)
    res = ingest.ingest_lines(settings.engine, lines, now)
    assert [x["status"] for x in res] == ["accepted"] * 6 + ["rejected"] * 4
    assert all(x["reason"] == "key.window: time is after the key's revocation" for x in res[6:])
    assert [x["seq"] for x in res] == list(range(1, 11))
    with db.read_conn(settings.engine) as c:
        logged = sorted(c.execute(sa.select(s.leaves.c.seq).where(s.leaves.c.kid == a.kid)).scalars())
    assert logged == [1, 2, 3, 4, 5, 6]


def test_a_key_revoked_now_while_its_batch_commits_keeps_no_line_after_the_revocation(
    settings, tools, monkeypatch
):
    """`agent revoke KID` (no --at) from another process while a batch of that key is in its write
    transaction: the revoke waits for the batch and revokes after its lines, or the batch sees the
    revocation and rejects what follows it. On PostgreSQL the key's row, not yet revoked, was not
    locked: the revoke committed at once and the batch then logged lines timed after it, which
    made the month's bundle fail `tr7-audit verify` for good (23 races in 40)."""
    import threading

    from collector import credentials, db, ingest

    now = int(time.time())
    a = tools.Agent()
    tools.enrol(settings, "acme", a, now - H)
    before = [a.beat(now - 600 + 60 * i, {"TR7-1": "running"}) for i in range(3)]
    assert {x["status"] for x in ingest.ingest_lines(settings.engine, before, now)} == {"accepted"}
    ahead = [a.beat(now + 60 + 10 * i, {"TR7-1": "running"}) for i in range(4)]  # its clock runs ahead
    real, got = ingest._append, {}

    def operator_revokes_meanwhile(conn, *args, **kw):
        if not got:
            def revoke() -> None:
                got["at"] = db.write_tx(
                    settings.engine, lambda c: credentials.revoke_agent(c, a.kid, None, int(time.time()))
                )

            got["thread"] = threading.Thread(target=revoke)
            got["thread"].start()
            got["thread"].join(1.5)  # waits on the batch's lock (it did not, on PostgreSQL)
        return real(conn, *args, **kw)

    monkeypatch.setattr(ingest, "_append", operator_revokes_meanwhile)
    res = ingest.ingest_lines(settings.engine, ahead, now)
    got["thread"].join()
    with db.read_conn(settings.engine) as c:
        times = c.execute(sa.select(s.leaves.c.time).where(s.leaves.c.kid == a.kid)).scalars().all()
    assert max(times) < got["at"], (res, got["at"])
    assert len(times) == 3 + sum(x["status"] == "accepted" for x in res)


def test_revoke_without_a_time_is_never_refused(settings, tools):
    """A key may sign up to 300 s ahead: holding one heartbeat just ahead of now kept `revoke` (at
    now) refused for ever. Without --at it is revoked just after the last logged heartbeat."""
    from collector import credentials, db
    from collector.ingest import ingest_lines

    now = int(time.time())
    a = tools.Agent("a")
    tools.enrol(settings, "acme", a, now - H)

    def status(t: int) -> str:
        return ingest_lines(settings.engine, [a.beat(t, {"TR7-1": "running"})], now)[0]["status"]

    assert status(now + 295) == "accepted"
    at = db.write_tx(settings.engine, lambda c: credentials.revoke_agent(c, a.kid, None, now))
    assert at == now + 296
    assert status(now + 297) == "rejected"  # after it (one at it is inside the window, §4)
    b = tools.Agent("b")
    tools.enrol(settings, "acme", b, now - H)
    assert db.write_tx(settings.engine, lambda c: credentials.revoke_agent(c, b.kid, None, now)) == now


def test_each_request_is_logged_with_what_was_refused_and_why(client, settings, tools, caplog):
    a = tools.Agent()
    now = int(time.time())
    tools.enrol(settings, "acme", a, now - H)
    good = a.beat(now - 60, {"TR7-1": "running"})
    with caplog.at_level("INFO", logger="collector.server"):
        _post(client, [good, good, "not-a-jws", a.beat(now + 900, {})])
    lines = [r.getMessage() for r in caplog.records if r.name == "collector.server"]
    counted = "lines=4 accepted=1 duplicate=1 rejected=2"
    assert any("event=ingest " in x and counted in x for x in lines), lines
    rejected = next(x for x in lines if "event=ingest_rejected" in x)
    assert "rejected=2" in rejected and "time.future" in rejected


def test_a_key_is_never_revoked_at_or_before_its_enrolment(settings, tools):
    """A key enrolled for next month and revoked now got a window ending before it began: every
    audit bundle of the provider then failed verify (agents.format), for good."""
    from collector import credentials, db, registry
    from protocol.timefmt import format_time

    now = int(time.time())
    a = tools.Agent("later")
    tools.enrol(settings, "acme", a, now + 40 * 86400)
    import pytest

    with pytest.raises(registry.RegistryError, match="would end its window before it begins"):
        db.write_tx(settings.engine, lambda c: credentials.revoke_agent(c, a.kid, now, now))
    at = db.write_tx(settings.engine, lambda c: credentials.revoke_agent(c, a.kid, None, now))
    assert at == now + 40 * 86400 + 1  # without --at: just after the enrolment
    # `agent add --enrolled-at` of a key already enrolled: refused, not silently kept
    b = tools.Agent("b")
    tools.enrol(settings, "acme", b, now - 86400)
    with pytest.raises(registry.RegistryError, match=f"already enrolled, at {format_time(now - 86400)}"):
        db.write_tx(settings.engine, lambda c: credentials.add_agent(
            c, "acme", "b", b.key.public_b64, now - 30 * 86400, exact=True))
    assert db.write_tx(settings.engine, lambda c: credentials.add_agent(
        c, "acme", "b", b.key.public_b64, now)) == b.kid  # without a time: idempotent, as before
    # a revocation stored at or before the enrolment (before this was refused) is repaired by
    # `agent revoke`: moved just after the enrolment, the smallest window there is
    from collector import schema as sch

    db.write_tx(settings.engine, lambda c: c.execute(
        sch.agents.update().where(sch.agents.c.kid == b.kid).values(revoked_at=now - 2 * 86400)))
    repaired = db.write_tx(settings.engine, lambda c: credentials.revoke_agent(c, b.kid, None, now))
    assert repaired == now - 86400 + 1


def test_a_keys_weakness_check_runs_once_and_its_revocation_is_read_every_batch(settings, tools, monkeypatch):
    """The scalar multiplication that proves a key is not weak (~44 us, as much as a signature) is
    paid once per key and process, not once per batch: an agent posting as it polls sends
    batches of one. What can change (enrolment, revocation) is still read every batch."""
    from collector import credentials, db, ingest

    loads: list[str] = []

    def counted(text: str):
        loads.append(text)
        return load(text)

    load = ingest.load_public_key_b64
    monkeypatch.setattr(ingest, "load_public_key_b64", counted)
    ingest._public_key.cache_clear()
    now = int(time.time())
    a = tools.Agent("a")
    tools.enrol(settings, "acme", a, now - H)

    def status(t: int) -> str:
        return ingest.ingest_lines(settings.engine, [a.beat(t, {"TR7-1": "running"})], now)[0]["status"]

    assert [status(now - 600 + i * 60) for i in range(3)] == ["accepted"] * 3
    assert len(loads) == 1
    db.write_tx(settings.engine, lambda c: credentials.revoke_agent(c, a.kid, now - 300, now))
    assert status(now - 240) == "rejected"
    assert len(loads) == 1
