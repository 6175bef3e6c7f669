"""`tr7-collector key rotate` (collector/keyrotation.py): a new checkpoint key on both databases.

What users rely on: bundles exported after a rotation verify with the new key, closed months'
frozen checkpoints included, while everything signed before still verifies with the old one; the
old key hands over in a statement both keys sign; a process still holding the retired key signs
nothing (its restart is refused, its API answers 503) but keeps ingesting; a stored checkpoint
the current key does not verify stops the rotation; a rotation cut short after its commit is
finished by the next command.
"""

import shutil
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from audit.verify import verify_bundle
from collector import accounting, db, ingest, keyrotation, registry, tlog
from collector import schema as s
from collector.custody import run as custody_run
from collector.export import export
from collector.server import create_app
from collector.settings import Settings, SetupError
from protocol.keyhandover import open_handover
from protocol.keys import load_private_key
from protocol.note import NoteError, NoteSigner, NoteVerifier, open_note
from protocol.timefmt import month_of, parse_time
from tests._seed import token

DAY = 86400


def _seeded(settings: Settings, tools, now: int) -> tuple[str, str, object]:
    """A closed earlier month and an open current one, each with heartbeats and a stored checkpoint."""
    a = tools.Agent("a")
    tools.enrol(settings, "acme", a, now - 60 * DAY)
    db.write_tx(settings.engine, lambda c: registry.apply_catalog(c, tools.catalog()))
    t_old, t_new = now - 40 * DAY, now - 3 * 3600
    if month_of(t_new + 1800) != month_of(t_new):
        t_new -= 3600
    old, new = month_of(t_old), month_of(t_new)
    lines = [a.beat(t_old + 600 * i, {"TR7-0001": "running"}) for i in range(3)]
    lines += [a.beat(t_new + 600 * i, {"TR7-0001": "running"}) for i in range(3)]
    assert {r["status"] for r in ingest.ingest_lines(settings.engine, lines, now)} == {"accepted"}
    for m in (old, new):
        db.write_tx(settings.engine, lambda c, m=m: tlog.checkpoint(c, settings, "acme", m))
    db.write_tx(settings.engine, lambda c: accounting.close(c, settings, "acme", old))
    return old, new, a


def _export(settings: Settings, month: str, out: Path) -> Path:
    with db.read_conn(settings.engine) as c:
        path, agrees = export(c, settings, "acme", month, out)
    report = verify_bundle(path, workers=1)
    assert agrees and report.ok, [f.to_json() for f in report.errors]
    return path


def _verifier(vkey: str) -> NoteVerifier:
    return NoteVerifier.from_vkey(vkey)


def _identity(settings: Settings) -> str:
    with db.read_conn(settings.engine) as c:
        return c.execute(sa.select(s.meta.c.value).where(s.meta.c.key == "collector_verifier_key")).scalar()


def test_rotation_keeps_every_bundle_verifiable(settings, tools, tmp_path: Path) -> None:
    now = int(time.time())
    old_month, new_month, _a = _seeded(settings, tools, now)
    before = _export(settings, old_month, tmp_path / "before")
    old_vkey = (before / "collector.pub").read_text().strip()

    heard: list[tuple[str, int, int]] = []
    r = keyrotation.rotate(settings, now, lambda *step: heard.append(step))

    assert r.old == old_vkey and r.new != old_vkey
    assert r.checkpoints >= 2 and r.closes == 1
    # progress for long work: each table counted up to its whole
    assert ("cosigning checkpoints", r.checkpoints, r.checkpoints) in heard
    assert heard[-1] == ("cosigning closes", 1, 1)
    assert _identity(settings) == r.new
    data = settings.data_dir
    assert not (data / keyrotation.NEXT_KEY).exists()
    installed = load_private_key(data / "collector.key").private
    assert NoteSigner(settings.origin, installed).verifier_key() == r.new
    # every stored note opens under either key; the frozen checkpoint of the closed month too
    with db.read_conn(settings.engine) as c:
        notes = list(c.execute(sa.select(s.checkpoints.c.note)).scalars())
        notes += list(c.execute(sa.select(s.closes.c.checkpoint)).scalars())
    for note in notes:
        assert open_note(note, [_verifier(r.old)]) and open_note(note, [_verifier(r.new)])
    # an auditor who pinned the old key reaches the new one through the statement
    pinned = open_handover(r.statement, r.old).new
    for month in (old_month, new_month):
        after = _export(settings, month, tmp_path / f"after-{month}")
        assert (after / "collector.pub").read_text().strip() == r.new == pinned
        assert verify_bundle(after, workers=1, collector_key=pinned).ok
        stale_pin = verify_bundle(after, workers=1, collector_key=r.old)
        assert [f.rule for f in stale_pin.errors] == ["collector.pinned"]
        assert "tr7-audit handover" in str(stale_pin.errors[0])
        if month == old_month:
            closed = (after / "closed" / "checkpoint").read_text()
            assert open_note(closed, [_verifier(r.old)]) and open_note(closed, [_verifier(r.new)])
    # the bundle exported before still verifies with the key it carries
    assert verify_bundle(before, workers=1).ok
    # the hand-over statement: both keys sign it, it names both
    text, _names = open_note(r.statement, [_verifier(r.old)])
    assert f"old {r.old}\n" in text and f"new {r.new}\n" in text
    assert open_note(r.statement, [_verifier(r.new)])[0] == text
    with db.read_conn(settings.engine) as c:
        assert keyrotation.retired_keys(c) == [{"vkey": r.old, "retired_at": now, "statement": r.statement}]
    # a new checkpoint is signed by the new key alone
    a2 = tools.Agent("b")
    tools.enrol(settings, "acme", a2, now - 60 * DAY)
    ingest.ingest_lines(settings.engine, [a2.beat(now - 120, {"TR7-0001": "running"})], now)
    note = db.write_tx(settings.engine, lambda c: tlog.checkpoint(c, settings, "acme", month_of(now - 120)))
    assert open_note(note, [_verifier(r.new)])
    with pytest.raises(NoteError, match="no signature by a known key"):
        open_note(note, [_verifier(r.old)])
    # a second rotation: the history keeps both retired keys in order
    r2 = keyrotation.rotate(settings, now + 1)
    with db.read_conn(settings.engine) as c:
        assert [x["vkey"] for x in keyrotation.retired_keys(c)] == [r.old, r2.old] == [r.old, r.new]
    _export(settings, old_month, tmp_path / "after-second")


def test_a_process_with_the_retired_key_signs_nothing(settings, tools, tmp_path: Path) -> None:
    now = int(time.time())
    _old, _new, a = _seeded(settings, tools, now)
    # another host's data directory: the same key and origin, copied before the rotation
    other = tmp_path / "other-host"
    other.mkdir()
    for name in ("collector.key", "origin"):
        shutil.copy2(settings.data_dir / name, other / name)
    stale = Settings(other, settings.db_url)
    stale.open()
    viewer = token(settings, "acme", "auditor")
    r = keyrotation.rotate(settings, now)
    try:
        # it still ingests (nothing stored is signed) ...
        line = a.beat(now - 60, {"TR7-0001": "running"})
        assert ingest.ingest_lines(stale.engine, [line], now)[0]["status"] == "accepted"
        # ... but signs no checkpoint: the CLI's error, the API's 503
        with pytest.raises(keyrotation.StaleKey, match="retired"):
            db.write_tx(stale.engine, lambda c: tlog.checkpoint(c, stale, "acme", month_of(now - 60)))
        with TestClient(create_app(stale)) as client:
            got = client.get(f"/v1/log/acme/{month_of(now - 60)}/checkpoint",
                             headers={"Authorization": f"Bearer {viewer}"})
            named = client.get("/v1/log/key", headers={"Authorization": f"Bearer {viewer}"}).json()
        assert got.status_code == 503 and r.new in got.json()["detail"]
        assert named["key"] == r.new  # the database's key, not the retired one this process holds
        # restarted, it is refused, with the way out
        with pytest.raises(SetupError, match="retired by `tr7-collector key rotate`"):
            Settings(other, settings.db_url).open()
        # with the new key copied over, the running process signs again (no restart), and a new
        # one starts
        shutil.copy2(settings.data_dir / "collector.key", other / "collector.key")
        note = db.write_tx(stale.engine, lambda c: tlog.checkpoint(c, stale, "acme", month_of(now - 60)))
        assert open_note(note, [_verifier(r.new)])
        fixed = Settings(other, settings.db_url)
        fixed.open()
        assert tlog.signer(fixed).verifier_key() == r.new
        fixed.engine.dispose()
    finally:
        stale.engine.dispose()


def test_the_service_on_the_rotating_host_signs_with_the_new_key_without_a_restart(settings, tools) -> None:
    """`sudo tr7-collector key rotate` beside the running service: its processes read the new
    collector.key at their next checkpoint; one cut short after the commit (collector.key.next not
    yet renamed) is finished by the service itself."""
    now = int(time.time())
    _old, _new, a = _seeded(settings, tools, now)
    service = Settings(settings.data_dir, settings.db_url)
    service.open()
    first = tlog.signer(service).verifier_key()
    month = month_of(now - 60)
    try:
        r = keyrotation.rotate(settings, now)  # the operator's command, another process
        ingest.ingest_lines(service.engine, [a.beat(now - 60, {"TR7-0001": "running"})], now)
        note = db.write_tx(service.engine, lambda c: tlog.checkpoint(c, service, "acme", month))
        assert open_note(note, [_verifier(r.new)]) and r.old == first
        assert tlog.signer(service).verifier_key() == r.new

        def crash(_settings: Settings) -> None:
            raise KeyboardInterrupt

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(keyrotation, "_install", crash)
            with pytest.raises(KeyboardInterrupt):
                keyrotation.rotate(settings, now + 1)
        assert (settings.data_dir / keyrotation.NEXT_KEY).exists()
        ingest.ingest_lines(service.engine, [a.beat(now - 30, {"TR7-0001": "running"})], now)
        note = db.write_tx(service.engine, lambda c: tlog.checkpoint(c, service, "acme", month))
        assert open_note(note, [_verifier(_identity(settings))])
        assert not (settings.data_dir / keyrotation.NEXT_KEY).exists()
    finally:
        service.engine.dispose()


def test_a_stored_checkpoint_the_key_does_not_verify_stops_the_rotation(settings, tools) -> None:
    now = int(time.time())
    _seeded(settings, tools, now)
    key_before = (settings.data_dir / "collector.key").read_bytes()
    identity = _identity(settings)

    def tamper(c) -> None:
        row = c.execute(sa.select(s.checkpoints.c.size, s.checkpoints.c.note).limit(1)).one()
        forged = row.note.replace("\n\n", "\nextra\n\n", 1)  # the text changed, the signature kept
        c.execute(s.checkpoints.update().where(s.checkpoints.c.size == row.size).values(note=forged))

    db.write_tx(settings.engine, tamper)
    with pytest.raises(SetupError, match="does not verify under the current checkpoint key"):
        keyrotation.rotate(settings, now)
    assert _identity(settings) == identity
    assert (settings.data_dir / "collector.key").read_bytes() == key_before
    assert not (settings.data_dir / keyrotation.NEXT_KEY).exists()


def test_a_rotation_cut_short_after_its_commit_is_finished_by_the_next_command(
    settings, tools, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    now = int(time.time())
    old_month, _new, _a = _seeded(settings, tools, now)

    def crash(_settings: Settings) -> None:
        raise KeyboardInterrupt  # the process killed between the commit and the rename

    monkeypatch.setattr(keyrotation, "_install", crash)
    with pytest.raises(KeyboardInterrupt):
        keyrotation.rotate(settings, now)
    monkeypatch.undo()
    data = settings.data_dir
    assert (data / keyrotation.NEXT_KEY).exists()
    new_vkey = _identity(settings)
    # the next command (here `key`) installs the committed key, and prints it
    again = Settings(data, settings.db_url)
    custody_run(type("Args", (), {"cmd": "key", "action": "show", "reason": None})(), again)
    assert capsys.readouterr().out.strip() == new_vkey
    assert not (data / keyrotation.NEXT_KEY).exists()
    again.engine.dispose()
    _export(Settings(data, settings.db_url), old_month, data.parent / "bundle")


def test_a_checkpoint_stored_while_a_rotation_starts_is_cosigned(settings, tools) -> None:
    """A process signs and stores a checkpoint with the current key, its transaction still open,
    when `key rotate` starts elsewhere: the rotation waits for it (PostgreSQL: the key's row read
    FOR SHARE against the rotation's FOR UPDATE; SQLite: one writer), then cosigns that note too.
    Had it not waited, the note would stay signed by the retired key alone, and every bundle
    carrying it would fail verify under the new collector.pub."""
    import threading

    now = int(time.time())
    _old, _new, a = _seeded(settings, tools, now)
    ingest.ingest_lines(settings.engine, [a.beat(now - 60, {"TR7-0001": "running"})], now)
    month = month_of(now - 60)
    other = Settings(settings.data_dir, settings.db_url)
    other.open()
    signed, release = threading.Event(), threading.Event()
    got: dict[str, object] = {}

    def store_and_wait(c) -> str:
        note = tlog.checkpoint(c, other, "acme", month)
        signed.set()
        assert release.wait(30)
        return note

    def rotation() -> None:
        got["rotation"] = keyrotation.rotate(settings, now)

    storing = threading.Thread(target=lambda: got.update(note=db.write_tx(other.engine, store_and_wait)))
    storing.start()
    try:
        assert signed.wait(30)
        rotating = threading.Thread(target=rotation)
        rotating.start()
        rotating.join(1.0)
        assert rotating.is_alive(), "the rotation did not wait for the open transaction"
    finally:
        release.set()
        storing.join(30)
    rotating.join(60)
    other.engine.dispose()
    r = got["rotation"]
    assert isinstance(r, keyrotation.Rotation) and isinstance(got["note"], str)
    stored = db.write_tx(settings.engine, lambda c: tlog.checkpoint(c, settings, "acme", month))
    assert stored.startswith(got["note"]) and stored != got["note"]  # the same note, one signature more
    assert open_note(stored, [_verifier(r.new)]) and open_note(stored, [_verifier(r.old)])


def test_the_new_key_keeps_the_old_ones_owner_and_mode(settings, tools) -> None:
    """The packaged service runs as its own user and an operator may rotate with sudo: the new
    collector.key must stay readable by the service (as root here, the old key is first given to
    another user; otherwise the file stays the operator's own)."""
    import os

    key = settings.data_dir / "collector.key"
    owner = (65534, 65534) if os.geteuid() == 0 else (os.getuid(), os.getgid())
    if os.geteuid() == 0:
        os.chown(key, *owner)
    keyrotation.rotate(settings, int(time.time()))
    st = key.stat()
    assert (st.st_uid, st.st_gid) == owner and st.st_mode & 0o777 == 0o600
    lock = (settings.data_dir / "collector.key.lock").stat()
    assert (lock.st_uid, lock.st_gid) == owner


def test_the_api_serves_the_key_and_the_hand_overs_to_check(settings, tools) -> None:
    """GET /v1/log/key: what an auditor's tooling fetches, then checks from the key it pinned."""
    auditor, viewer = token(settings, "acme", "auditor"), token(settings, "acme", "viewer")
    db.write_tx(settings.engine, lambda c: registry.apply_catalog(c, tools.catalog()))  # acme exists
    first = tlog.signer(settings).verifier_key()
    with TestClient(create_app(settings)) as client:
        def get(tok: str):
            return client.get("/v1/log/key", headers={"Authorization": f"Bearer {tok}"})

        assert get(auditor).json() == {"key": first, "retired": []}
        assert get(viewer).status_code == 403  # the log is not the viewer's (collector/roles.py)
        r1 = keyrotation.rotate(settings, 1_790_000_000)
        r2 = keyrotation.rotate(settings, 1_790_086_400)
        got = get(auditor).json()
    assert got["key"] == r2.new
    assert [(x["key"], x["retired_at"]) for x in got["retired"]] == [
        (first, "2026-09-21T14:13:20Z"), (r1.new, "2026-09-22T14:13:20Z")]
    pinned = first
    for step in got["retired"]:
        pinned = open_handover(step["statement"], pinned).new
    assert pinned == got["key"]


def test_a_lost_key_is_replaced_and_every_bundle_verifies_with_the_new_one(
    settings, tools, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The data directory's key and origin lost with no copy (the database kept): every command
    refused, pointing at `key replace`; replace makes a new key under the same origin that
    cosigns every stored checkpoint (checked with the old verifier key the database holds), and
    records why, with no hand-over statement; bundles then verify with the new key only."""
    now = int(time.time())
    old_month, new_month, a = _seeded(settings, tools, now)
    old_vkey = _identity(settings)
    origin = settings.origin
    for name in ("collector.key", "origin"):
        (settings.data_dir / name).unlink()
    lost = Settings(settings.data_dir, settings.db_url)
    with pytest.raises(SetupError, match="key replace --reason"):
        lost.open()

    args = type("Args", (), {"cmd": "key", "action": "replace", "reason": "disk lost, no backup"})()
    assert custody_run(args, lost) == 0
    out = capsys.readouterr().out
    new_vkey = _identity(settings)
    assert new_vkey != old_vkey and f"new checkpoint key: {new_vkey}" in out
    assert "replaced, without a hand-over" in out and "collector.key.replaced" not in out
    assert (settings.data_dir / "origin").read_text() == origin + "\n"
    assert new_vkey.startswith(origin + "+")
    with db.read_conn(settings.engine) as c:
        [entry] = keyrotation.history(c)
        when = entry.pop("retired_at")
        assert entry == {"key": old_vkey, "statement": None, "replaced": "disk lost, no backup"}
        assert now <= parse_time(when) <= int(time.time())
        notes = list(c.execute(sa.select(s.checkpoints.c.note)).scalars())
        notes += list(c.execute(sa.select(s.closes.c.checkpoint)).scalars())
    for note in notes:
        assert open_note(note, [_verifier(old_vkey)]) and open_note(note, [_verifier(new_vkey)])

    fresh = Settings(settings.data_dir, settings.db_url)
    fresh.open()  # the data directory works again
    for month in (old_month, new_month):
        after = _export(fresh, month, tmp_path / f"after-{month}")
        assert (after / "collector.pub").read_text().strip() == new_vkey
        stale_pin = verify_bundle(after, workers=1, collector_key=old_vkey)
        assert [f.rule for f in stale_pin.errors] == ["collector.pinned"]
    # ingest goes on, and new checkpoints are signed by the new key
    got = ingest.ingest_lines(fresh.engine, [a.beat(now - 60, {"TR7-0001": "running"})], now)
    assert got[0]["status"] == "accepted"
    note = db.write_tx(fresh.engine, lambda c: tlog.checkpoint(c, fresh, "acme", month_of(now - 60)))
    assert open_note(note, [_verifier(new_vkey)])
    # the API and `key history` show the replacement: no statement, the reason
    viewer = token(fresh, "acme", "auditor")
    with TestClient(create_app(fresh)) as client:
        body = client.get("/v1/log/key", headers={"Authorization": f"Bearer {viewer}"}).json()
    assert body["key"] == new_vkey
    assert body["retired"] == [{"key": old_vkey, "retired_at": when,
                                "statement": None, "replaced": "disk lost, no backup"}]


def test_replace_of_a_key_still_present_moves_it_aside_and_refuses_what_it_must(
    settings, tools, tmp_path: Path
) -> None:
    """A compromised key is still there: replace moves it to collector.key.replaced (never
    deleted), and a host still holding it is refused. Replace wants a reason, and like rotate it
    never cosigns a stored note the old key does not verify."""
    now = int(time.time())
    _seeded(settings, tools, now)
    old_vkey = _identity(settings)
    old_bytes = (settings.data_dir / "collector.key").read_bytes()
    other = tmp_path / "other-host"
    other.mkdir()
    for name in ("collector.key", "origin"):
        shutil.copy2(settings.data_dir / name, other / name)
    with pytest.raises(SetupError, match="needs --reason"):
        keyrotation.replace(settings, now, "  ")

    def tamper(c) -> None:
        row = c.execute(sa.select(s.checkpoints.c.size, s.checkpoints.c.note).limit(1)).one()
        c.execute(s.checkpoints.update().where(s.checkpoints.c.size == row.size)
                  .values(note=row.note.replace("\n\n", "\nextra\n\n", 1)))
        return row

    row = db.write_tx(settings.engine, tamper)
    with pytest.raises(SetupError, match="does not verify under the current checkpoint key"):
        keyrotation.replace(settings, now, "key leaked")
    assert _identity(settings) == old_vkey and not (settings.data_dir / keyrotation.NEXT_KEY).exists()
    assert (settings.data_dir / "collector.key").read_bytes() == old_bytes
    db.write_tx(settings.engine, lambda c: c.execute(
        s.checkpoints.update().where(s.checkpoints.c.size == row.size).values(note=row.note)))

    r = keyrotation.replace(settings, now, "key leaked")
    assert r.old == old_vkey and _identity(settings) == r.new and r.statement == ""
    assert (settings.data_dir / keyrotation.REPLACED_KEY).read_bytes() == old_bytes
    installed = load_private_key(settings.data_dir / "collector.key").private
    assert NoteSigner(settings.origin, installed).verifier_key() == r.new
    with pytest.raises(SetupError, match="key replace"):
        Settings(other, settings.db_url).open()


def test_replace_finishes_a_rotation_cut_short_rather_than_replace_its_key(
    settings, tools, monkeypatch: pytest.MonkeyPatch
) -> None:
    """collector.key looked lost, but a rotation had committed and not renamed its file: replace
    installs it and stops (the key is not lost), instead of retiring a key it has."""
    now = int(time.time())
    _seeded(settings, tools, now)

    def crash(_settings: Settings) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(keyrotation, "_install", crash)
    with pytest.raises(KeyboardInterrupt):
        keyrotation.rotate(settings, now)
    monkeypatch.undo()
    committed = _identity(settings)
    (settings.data_dir / "collector.key").unlink()
    with pytest.raises(SetupError, match="a rotation cut short was finished"):
        keyrotation.replace(Settings(settings.data_dir, settings.db_url), now, "key file gone")
    assert _identity(settings) == committed
    installed = load_private_key(settings.data_dir / "collector.key").private
    assert NoteSigner(settings.origin, installed).verifier_key() == committed


def test_a_replacement_cut_short_after_its_commit_is_finished_even_with_the_origin_lost(
    settings, tools, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Key and origin lost; replace commits, then the process dies before the rename: the origin
    was written before the commit, so the next command recognises collector.key.next as the
    database's key and installs it (written after, the next command made an origin from the host
    name, did not recognise the key, and the data directory was stuck)."""
    now = int(time.time())
    _seeded(settings, tools, now)
    for name in ("collector.key", "origin"):
        (settings.data_dir / name).unlink()

    real = db.write_tx

    def commit_then_crash(engine, fn):
        real(engine, fn)
        raise KeyboardInterrupt  # the process killed right after the commit

    monkeypatch.setattr(keyrotation.db, "write_tx", commit_then_crash)
    with pytest.raises(KeyboardInterrupt):
        keyrotation.replace(Settings(settings.data_dir, settings.db_url), now, "disk lost")
    monkeypatch.undo()
    committed = _identity(settings)
    again = Settings(settings.data_dir, settings.db_url)
    again.open()
    assert not (settings.data_dir / keyrotation.NEXT_KEY).exists()
    installed = load_private_key(settings.data_dir / "collector.key").private
    assert NoteSigner(again.origin, installed).verifier_key() == committed
    again.engine.dispose()


def test_a_serving_process_exports_a_closed_month_with_the_new_key(settings, tools, tmp_path: Path) -> None:
    """After `key rotate` in another process, a serving process's bundle of a closed month (its
    checkpoints stored, nothing to sign) named the retired key in collector.pub: verify pinned to
    the new key failed it, and after `key replace` it kept naming the key that may be stolen."""
    now = int(time.time())
    old, _new, _a = _seeded(settings, tools, now)
    service = Settings(settings.data_dir, settings.db_url)
    service.open()
    try:
        first = tlog.signer(service).verifier_key()  # the service has loaded collector.key
        r = keyrotation.rotate(settings, now)  # the operator's command, another process
        assert r.old == first
        with db.read_conn(service.engine) as c:
            path, _agrees = export(c, service, "acme", old, tmp_path / "b")
        assert (path / "collector.pub").read_text().strip() == r.new
        report = verify_bundle(path, workers=1, collector_key=r.new)
        assert report.ok, [f.to_json() for f in report.errors]
    finally:
        service.engine.dispose()
