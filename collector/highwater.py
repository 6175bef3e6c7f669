"""The log high-water mark: the largest size of each log this data directory has seen committed
or signed, kept beside the key, so that a database restored from an older backup is refused
rather than served.

Why: after such a restore the collector started without a word; heartbeats it had answered
`accepted` were gone (agents had dropped them from their spools), new ones took the same leaf
indexes, and the same key signed a second, different tree at a size auditors already held, and
closed a month again with another total. The database cannot tell (it is the old one); the
data directory can. The mark is per database (`meta` row `database_id`, which a backup keeps),
written at most once a second by each process (so the last second before a crash may be
missing: the mark is a floor, it never refuses a database that holds what was seen), and every
15 s each serving process reads the size of every log, whoever appended it (`observe`): several
hosts on one PostgreSQL each keep a data directory, and a host's marks knew only its own
commits, so a restore passed the host that had seen least.
"""

import atexit
import contextlib
import fcntl
import json
import logging
import os
import secrets
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from collector import schema as s
from collector.lockfile import open_lock
from protocol.keys import replace_file

log = logging.getLogger(__name__)
FILE = "highwater.json"
DATABASE_ID = "database_id"  # meta row: a random id made with the schema, kept by backups
FLUSH_EVERY = 1.0  # seconds between writes of one process
WATCH_EVERY = 15.0  # seconds between a serving process's readings of every log's size (observe)


class Unreadable(Exception):
    """highwater.json is there but cannot be read or is not the marks document: no check can be made."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


def owner_for(data_dir: Path) -> tuple[int, int] | None:
    """(uid, gid) of the data directory when root writes into another user's: a file root left there
    (an operator's `sudo tr7-collector import`) kept the service from writing the marks again, or
    even from reading them, which silently took away the refusal of an older backup."""
    if os.geteuid() != 0:
        return None
    st = data_dir.stat()
    return None if st.st_uid == 0 else (st.st_uid, st.st_gid)


class Rewound(Exception):
    """The database's logs are shorter than this data directory has seen."""

    def __init__(self, shrunk: dict[str, tuple[int, int]]) -> None:
        super().__init__(shrunk)
        self.shrunk = shrunk  # "provider/month" -> (seen, in the database)


def database_id(conn: Connection, create: bool) -> str | None:
    row = conn.execute(sa.select(s.meta.c.value).where(s.meta.c.key == DATABASE_ID)).scalar()
    if row is None and create:
        row = secrets.token_hex(16)
        conn.execute(s.meta.insert().values(key=DATABASE_ID, value=row))  # a race: write_tx retries
    return None if row is None else str(row)


def _sizes(conn: Connection) -> dict[str, int]:
    return {f"{r.provider}/{r.month}": int(r.size) for r in conn.execute(sa.select(s.logs))}


class _Mark:
    """One data directory's marks of one database, as this process knows them."""

    def __init__(self, data_dir: Path, db_id: str) -> None:
        self.path = data_dir / FILE
        self.db_id = db_id
        self.pending: dict[str, int] = {}
        self.last = 0.0
        self.lock = threading.Lock()
        self.warned = False

    def note(self, sizes: dict[str, int]) -> None:
        with self.lock:
            for k, v in sizes.items():
                if v > self.pending.get(k, 0):
                    self.pending[k] = v
            due = time.monotonic() - self.last >= FLUSH_EVERY
        if due:
            self.flush()

    def flush(self) -> None:
        with self.lock:
            pending, self.pending, self.last = self.pending, {}, time.monotonic()
        if pending:
            try:
                self.write(pending, replace=False)
            except (OSError, Unreadable) as exc:
                # A command run by a user who may read but not write the data directory: the mark
                # stays where the service (which owns it) put it; nothing of the command fails.
                if not self.warned:
                    self.warned = True
                    log.warning("event=highwater_not_written path=%s error=%r", self.path, exc)

    def write(self, sizes: dict[str, int], replace: bool) -> None:
        """Merge (the larger size wins) or replace this database's marks, across processes. Written
        whole and synced (a power cut left an empty file, read as no marks at all), owned by the data
        directory's owner when root writes it."""
        owner = owner_for(self.path.parent)
        # Read-only (collector/lockfile.py): it was opened for writing, and one root had made was
        # refused to the service for good.
        with open(open_lock(self.path.with_suffix(".lock"), owner), closefd=True) as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                doc = _read(self.path.parent)
            except Unreadable:
                if not replace:  # kept for the next start to refuse: overwritten, it hid a restore
                    raise
                doc = {}  # `accept-restore`: the operator's way past a damaged file
            mine = {} if replace else dict(doc.get(self.db_id, {}))
            for k, v in sizes.items():
                mine[k] = max(int(mine.get(k, 0)), v)
            doc[self.db_id] = mine
            replace_file(json.dumps(doc, sort_keys=True).encode(), self.path, owner)


_marks: "weakref.WeakKeyDictionary[Engine, _Mark]" = weakref.WeakKeyDictionary()


def attach(engine: Engine, data_dir: Path, conn: Connection, create: bool) -> None:
    """Check the database against the data directory's marks (Rewound if a log is shorter), then
    record the engine's commits from now on. ``create``: make the database's id if it has none."""
    # The marks first, then the database, whose snapshot its first statement fixes (SQLite's
    # deferred transaction, PostgreSQL's REPEATABLE READ): another process's commit and mark
    # between that statement and the file read made the database look a leaf behind (a false
    # "restored from an older backup", ~1 open in 1,700 under ingest on PostgreSQL).
    doc = _read(data_dir)
    db_id = database_id(conn, create=False)
    marks = _marks_in(doc, db_id)
    now = _sizes(conn)
    shrunk = _behind(marks, now)
    if shrunk:
        raise Rewound(shrunk)
    if db_id is None:
        db_id = database_id(conn, create)
        if db_id is None:
            return  # opened without migrating, before any process made the id: marked later
    mark = _Mark(data_dir, db_id)
    _marks[engine] = mark
    mark.note(now)


def _read(data_dir: Path) -> dict[str, Any]:
    """The data directory's marks document (database id -> "provider/month" -> size), {} if there is
    none yet; Unreadable if the file is there but cannot be read (its owner or mode) or is damaged:
    taken for "no marks", either had an older backup served without a word."""
    path = data_dir / FILE
    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise Unreadable(path, f"cannot be read ({exc.strerror or exc}): the service's user must own "
                               "it") from exc
    except ValueError as exc:
        raise Unreadable(path, f"is damaged ({exc})") from exc
    if not isinstance(doc, dict) or not all(isinstance(v, dict) for v in doc.values()):
        raise Unreadable(path, "is damaged (not a marks document)")
    return doc


def _marks_in(doc: dict[str, Any], db_id: str | None) -> dict[str, int]:
    """The marks a database is held to. One without an id is a database from before marks, or a
    backup of one restored (the id is what such a backup lacks): held to the marks of the one
    database this data directory has known, if only one (with several, it cannot tell which)."""
    if db_id is None:
        if len(doc) != 1:
            return {}
        db_id = next(iter(doc))
    got = doc.get(db_id, {})
    return {k: int(v) for k, v in got.items()} if isinstance(got, dict) else {}


def _behind(marks: dict[str, int], now: dict[str, int]) -> dict[str, tuple[int, int]]:
    """The logs the database holds fewer leaves of than marked: "provider/month" -> (seen, now)."""
    return {k: (v, now.get(k, 0)) for k, v in marks.items() if now.get(k, 0) < v}


def note(engine: Engine, sizes: dict[str, int]) -> None:
    """Logs of ``engine`` committed (or signed) at these sizes ("provider/month" -> size)."""
    mark = _marks.get(engine)
    if mark is not None:
        mark.note(sizes)


def observe(engine: Engine) -> None:
    """Mark the size of every log in the database, whoever appended it, and write the marks now
    (a serving process, every WATCH_EVERY s). Without it a host's marks held only what its own
    processes committed (behind a load balancer, a fraction of each log) and stayed behind while
    it was quiet (its last batches were marked at its next commit or its exit), so a restore
    missing them was taken for the latest. A database found behind its marks here (restored
    under a running service) is logged: the next start refuses it."""
    mark = _marks.get(engine)
    if mark is None:
        return
    try:
        doc = _read(mark.path.parent)
    except Unreadable as exc:
        log.error("event=highwater_unreadable path=%s reason=%r: a restore of an older backup would not "
                  "be noticed", exc.path, exc.reason)
        doc = {}
    with engine.connect() as conn:
        now = _sizes(conn)
    shrunk = _behind(_marks_in(doc, mark.db_id), now)
    if shrunk:
        log.error("event=database_behind_marks %s: restored under the running service? Stop it, and "
                  "see docs/collector.md, Backup and restore", describe(shrunk))
    mark.note(now)
    mark.flush()


def accept(engine: Engine, data_dir: Path, conn: Connection) -> dict[str, tuple[int, int]] | None:
    """Take the database's sizes as the marks (an operator accepting a restore): what was lost, or
    None when the marks could not be read (the way past a damaged file: rewritten, but what the
    database lacks is unknown, and "nothing lost" would have been a guess)."""
    try:
        doc: dict[str, Any] | None = _read(data_dir)
    except Unreadable:
        doc = None
    marks = _marks_in(doc or {}, database_id(conn, create=False))
    db_id = database_id(conn, create=True)
    assert db_id is not None
    now = _sizes(conn)
    lost = _behind(marks, now)
    _Mark(data_dir, db_id).write(now, replace=True)
    return None if doc is None else lost


@atexit.register
def _flush_all() -> None:
    for mark in list(_marks.values()):
        with contextlib.suppress(OSError, Unreadable):
            mark.flush()


def describe(shrunk: dict[str, tuple[int, int]]) -> str:
    return ", ".join(f"{k}: {seen} seen, {now} in the database" for k, (seen, now) in sorted(shrunk.items()))
