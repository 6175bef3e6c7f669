"""`tr7-collector key rotate` and `key replace`: a new checkpoint key cosigns every stored checkpoint.

Why cosign rather than re-sign: a checkpoint is a statement already given out (to auditors, in
bundles); its text and its old signature stay as they were, and the new key's signature line is
added (c2sp.org/signed-note allows several, and a verifier ignores those by keys it does not
know). So a bundle exported before the rotation still verifies with the old `collector.pub`, and
every bundle exported after it, closed months' frozen checkpoints included, with the new one
(heartbeat-v1.md §6 gives a bundle one verifier key). A stored note that the current key does
not verify stops the rotation: the new key never vouches for what the old one did not sign.

Order, so that a crash loses no key: the new key is written beside the old one
(`collector.key.next`), then one database transaction cosigns, records the old key as retired
with a statement signed by both keys, and makes the new one the database's identity; then the
file is renamed over `collector.key`. A crash after the commit is finished by the next command
on this data directory (finish_interrupted); before it, the database still names the old key and
`collector.key.next` is overwritten by the next rotation.
"""

import fcntl
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from collector import db
from collector import schema as s
from collector.lockfile import open_lock
from collector.settings import IDENTITY, IDENTITY_ROW, Settings, SetupError
from protocol.keyhandover import sign_handover
from protocol.keys import AgentKey, create_file_once, load_private_key, save_private_key, sync_dir
from protocol.note import NoteError, NoteSigner, NoteVerifier
from protocol.timefmt import format_time

NEXT_KEY = "collector.key.next"
RETIRED = "collector_retired_keys"  # meta row: JSON list of {vkey, retired_at, statement}


class StaleKey(SetupError):
    """This process holds a checkpoint key the database has retired (rotated by another process)."""


@dataclass(frozen=True)
class Rotation:
    old: str  # verifier keys, name+keyid+base64
    new: str
    checkpoints: int  # stored checkpoints cosigned
    closes: int  # closed months' frozen checkpoints cosigned
    statement: str  # a signed note: the old key hands over to the new one (protocol/keyhandover.py)


def retired_keys(conn: Connection) -> list[dict[str, Any]]:
    row = conn.execute(sa.select(s.meta.c.value).where(s.meta.c.key == RETIRED)).scalar()
    return [] if row is None else list(json.loads(row))


def current_key(conn: Connection) -> str | None:
    """The database's checkpoint key (what to pin), not this process's: a process still holding a
    retired key would otherwise name it."""
    return conn.execute(IDENTITY_ROW).scalar()


def history(conn: Connection) -> list[dict[str, str]]:
    """The retired keys, oldest first, as `key history`, GET /v1/log/key and the audit page show
    them: the verifier key, when it was retired (RFC 3339) and its hand-over statement; a key
    replaced (`key replace`) has no statement (null) and says why (``replaced``)."""
    return [{"key": r["vkey"], "retired_at": format_time(r["retired_at"]), "statement": r["statement"],
             **({"replaced": r["replaced"]} if r.get("replaced") else {})}
            for r in retired_keys(conn)]


def current_signer(conn: Connection, settings: Settings) -> NoteSigner:
    """The signer of the database's checkpoint key; StaleKey when this data directory does not
    hold it. After a rotation a serving process reads collector.key again (the rotation on this
    host renamed it; on another host an operator copied it): no restart is needed. The row is
    read FOR SHARE on PostgreSQL when the transaction may store what it signs: a rotation holds
    it FOR UPDATE, so a checkpoint stored meanwhile is either seen (and cosigned) by the
    rotation or signed with the new key."""
    from collector.tlog import signer  # tlog imports this module

    query = IDENTITY_ROW
    if conn.dialect.name == "postgresql" and not conn.get_execution_options().get("readonly"):
        query = query.with_for_update(read=True)
    current = conn.execute(query).scalar()
    key = signer(settings)
    if current is None or current == key.verifier_key():
        return key
    settings.__dict__.pop("key", None)  # rotated since this process read collector.key
    finish_interrupted(settings, current)  # a rotation here cut short after its commit
    key = signer(settings)
    if key.verifier_key() == current:
        return key
    raise StaleKey(
        f"this collector process signs checkpoints with key {key.verifier_key()}, which the "
        f"database retired: its checkpoint key is now {current}. Copy collector.key from the "
        "data directory where `tr7-collector key rotate` (or `key replace`) ran (this process "
        "reads it at its next checkpoint, no restart needed)"
    )


def _owner_of(model: Path) -> tuple[int, int]:
    """(uid, gid) of ``model``, or of its directory when it is gone (a key lost)."""
    st = (model if model.exists() else model.parent).stat()
    return st.st_uid, st.st_gid


def _owned_like(path: Path, model: Path) -> None:
    """A file made by root (`sudo tr7-collector key rotate`) goes to the owner of ``model``: the
    packaged service runs as its own user, and a root-owned 0600 collector.key stopped it."""
    if os.geteuid() == 0:
        # never through a link the service's user may have put there since (collector/lockfile.py)
        os.chown(path, *_owner_of(model), follow_symlinks=False)


@contextmanager
def _locked(data_dir: Path) -> Iterator[None]:
    """One rotation at a time in a data directory (the database's row lock covers other hosts).
    Read-only is enough for flock, so the service's user and root can share the file."""
    fd = open_lock(data_dir / "collector.key.lock", _owner_of(data_dir / "collector.key"))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _install(settings: Settings) -> None:
    os.replace(settings.data_dir / NEXT_KEY, settings.data_dir / "collector.key")
    sync_dir(settings.data_dir)  # the rename itself survives a crash
    settings.__dict__.pop("key", None)  # the cached_property reads the new file


def finish_interrupted(settings: Settings, identity: str) -> bool:
    """Complete a rotation whose transaction committed but whose key file was not yet renamed
    (the database names ``collector.key.next``'s key). True if it did."""
    nxt = settings.data_dir / NEXT_KEY
    if not nxt.exists():
        return False
    if NoteSigner(settings.origin, load_private_key(nxt).private).verifier_key() != identity:
        return False
    try:
        _install(settings)
    except FileNotFoundError:  # the rotating process renamed it meanwhile
        settings.__dict__.pop("key", None)
    return True


def _cosign_all(
    conn: Connection, old: NoteVerifier, new: NoteSigner, progress: Callable[[str, int, int], None]
) -> tuple[int, int]:
    counts = []
    for table, column, keys in (
        (s.checkpoints, s.checkpoints.c.note, ("provider", "month", "size")),
        (s.closes, s.closes.c.checkpoint, ("provider", "month")),
    ):
        done = 0
        rows = conn.execute(sa.select(*(table.c[k] for k in keys), column)).all()
        for n, row in enumerate(rows):
            progress(f"cosigning {table.name}", n, len(rows))  # ~0.2 ms a note: a long log has many
            where = [table.c[k] == v for k, v in zip(keys, row[:-1], strict=True)]
            try:
                note = new.cosign(row[-1], old)
            except NoteError as exc:
                raise SetupError(
                    f"the {table.name} row {'/'.join(map(str, row[:-1]))} does not verify under the "
                    f"current checkpoint key ({exc}): the database was altered or restored beside "
                    "another key. Nothing was rotated"
                ) from exc
            if note != row[-1]:
                conn.execute(table.update().where(*where).values({column.name: note}))
                done += 1
        progress(f"cosigning {table.name}", len(rows), len(rows))
        counts.append(done)
    return counts[0], counts[1]


def _silent(_stage: str, _done: int, _total: int) -> None:
    pass


def _retire(
    conn: Connection, old: NoteVerifier, new: NoteSigner, entry: dict[str, Any],
    progress: Callable[[str, int, int], None],
) -> tuple[int, int]:
    """The transaction of `rotate` and `replace`: still the database's key? then cosign every
    stored note, add the old key to the retired ones (``entry``: when, statement, why) and make
    the new one the identity. Returns the checkpoints and closes cosigned."""
    current = conn.execute(IDENTITY_ROW.with_for_update()).scalar()
    if current != old.vkey():
        raise SetupError(
            f"the database's checkpoint key is {current}, not {old.vkey()}: rotated or replaced "
            "meanwhile from another host? Nothing was changed"
        )
    counts = _cosign_all(conn, old, new, progress)
    retired = [*retired_keys(conn), {"vkey": old.vkey(), **entry}]
    conn.execute(s.meta.delete().where(s.meta.c.key == RETIRED))
    conn.execute(s.meta.insert().values(key=RETIRED, value=json.dumps(retired)))
    conn.execute(s.meta.update().where(s.meta.c.key == IDENTITY).values(value=new.verifier_key()))
    return counts


def rotate(settings: Settings, now: int, progress: Callable[[str, int, int], None] = _silent) -> Rotation:
    """Make a new checkpoint key this database's identity (see the module's docstring);
    ``progress(stage, done, total)`` hears of the stored notes as they are cosigned."""
    from collector.tlog import signer  # tlog imports settings, as this module does

    engine = settings.open()  # finishes an interrupted rotation, checks this dir's key is current
    with _locked(settings.data_dir):
        settings.__dict__.pop("key", None)  # another process may have rotated while we waited
        old = signer(settings)
        fresh = AgentKey.generate()
        save_private_key(fresh, settings.data_dir / NEXT_KEY)  # replaces an uncommitted one
        _owned_like(settings.data_dir / NEXT_KEY, settings.data_dir / "collector.key")
        new = NoteSigner(settings.origin, fresh.private)
        statement = sign_handover(old, new, settings.origin, now)

        def tx(conn: Connection) -> tuple[int, int]:
            return _retire(conn, old.verifier(), new, {"retired_at": now, "statement": statement}, progress)

        try:
            cps, closes = db.write_tx(engine, tx)
        except SetupError:  # refused inside the transaction: nothing committed
            (settings.data_dir / NEXT_KEY).unlink(missing_ok=True)
            raise
        # Any other failure leaves collector.key.next: the commit may have happened (a connection
        # lost at COMMIT), and the next command installs the file if the database names its key.
        _install(settings)
    return Rotation(old.verifier_key(), new.verifier_key(), cps, closes, statement)


REPLACED_KEY = "collector.key.replaced"


def replace(
    settings: Settings, now: int, reason: str, progress: Callable[[str, int, int], None] = _silent
) -> Rotation:
    """A new checkpoint key WITHOUT the old key's hand-over: for a key lost with no copy left, or
    one no longer trusted. Every stored checkpoint is cosigned as by `rotate`; the old signatures
    are checked with the old verifier key, which the database keeps, so the private key is not
    needed. The retired entry records ``reason`` and no statement: auditors who pinned the old
    key learn the new one out of band (a statement the old key signed now would prove nothing,
    since whoever holds it could sign one too). A collector.key still present is moved aside
    to collector.key.replaced, never deleted: what to do with it is the operator's call."""
    if not reason.strip():
        raise SetupError("key replace needs --reason: why the key is replaced, recorded for auditors")
    engine = settings.engine  # not settings.open(): it refuses a data directory without the key
    db.migrate(engine)
    with db.read_conn(engine) as conn:
        current = conn.execute(IDENTITY_ROW).scalar()
    if current is None:
        raise SetupError("this database has no checkpoint key yet: nothing to replace (any command "
                         "makes the first key)")
    if (settings.data_dir / "origin").exists() and finish_interrupted(settings, current):
        raise SetupError("a rotation cut short was finished: collector.key is the database's key "
                         "again, nothing to replace (run `key replace` again to replace it anyway)")
    old = NoteVerifier.from_vkey(current)
    settings.ensure_dir()
    # An origin lost with the key is written again before the commit, with the project's
    # write-once helper: a crash after the commit must leave an origin under which the next
    # command recognises collector.key.next as the database's key (finish_interrupted).
    create_file_once((old.name + "\n").encode(), settings.data_dir / "origin")
    settings.__dict__.pop("origin", None)
    if settings.origin != old.name:
        raise SetupError(f"the origin in {settings.data_dir} is {settings.origin!r}, the database's "
                         f"key is named {old.name!r}: this data directory belongs to another collector")
    with _locked(settings.data_dir):
        fresh = AgentKey.generate()
        save_private_key(fresh, settings.data_dir / NEXT_KEY)  # replaces an uncommitted one
        _owned_like(settings.data_dir / NEXT_KEY, settings.data_dir / "collector.key")
        new = NoteSigner(old.name, fresh.private)

        def tx(conn: Connection) -> tuple[int, int]:
            entry = {"retired_at": now, "statement": None, "replaced": reason.strip()}
            return _retire(conn, old, new, entry, progress)

        try:
            cps, closes = db.write_tx(engine, tx)
        except SetupError:
            (settings.data_dir / NEXT_KEY).unlink(missing_ok=True)
            raise
        if (settings.data_dir / "collector.key").exists():
            os.replace(settings.data_dir / "collector.key", settings.data_dir / REPLACED_KEY)
        _install(settings)
    return Rotation(current, new.verifier_key(), cps, closes, "")
