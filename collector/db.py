"""Engines for SQLite and PostgreSQL, write transactions that serialise, and Alembic migrations."""

import contextlib
import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.pool import ConnectionPoolEntry, NullPool

from collector.lockfile import open_lock

if TYPE_CHECKING:
    import sqlite3

T = TypeVar("T")
log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).parent / "migrations"
_PG_MIGRATE_LOCK = 0x7472_3763  # advisory lock id: "tr7c"


def normalise_url(url: str) -> str:
    """`postgresql://` and `postgres://` mean psycopg 3 here (SQLAlchemy would pick psycopg2)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def make_engine(url: str, pooled: bool = True) -> Engine:
    """The engine of a database URL; ``pooled=False``: a connection per use, closed after it."""
    url = normalise_url(url)
    pool: dict[str, Any] = {} if pooled else {"poolclass": NullPool}
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, **pool)

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: "sqlite3.Connection", _record: ConnectionPoolEntry) -> None:
            # Autocommit at the driver so that our own BEGIN below is the only one.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            # Writers take the database lock up front: no deadlock between two upgrading readers,
            # and leaf index allocation is serialised across processes.
            mode = "DEFERRED" if conn.get_execution_options().get("readonly") else "IMMEDIATE"
            conn.exec_driver_sql(f"BEGIN {mode}")

        return engine
    from collector import pgsession

    args: dict[str, Any] = {"connect_args": pgsession.client_args(url)}
    if pooled:
        args |= {"pool_pre_ping": True, "pool_size": 5, "max_overflow": 10}
    engine = sa.create_engine(url, **args, **pool)
    pgsession.bound_sessions(engine, url)
    return engine


# SQLSTATE classes and codes of a database that cannot serve now, whatever the statement:
# connection exceptions, insufficient resources (disk full, out of memory, too many
# connections), the server shutting down or starting (PostgreSQL appendix A)
_UNAVAILABLE_CLASSES = ("08", "53")
_UNAVAILABLE_CODES = frozenset({"57P01", "57P02", "57P03"})
# SQLite's: busy or locked past the busy timeout, disk full, I/O error, cannot open the file, a file
# the service's user may not write (restored by root: /healthz said ok while every batch was a 500)
_SQLITE_UNAVAILABLE = ("SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_FULL", "SQLITE_IOERR", "SQLITE_CANTOPEN",
                       "SQLITE_READONLY")
_SQLITE_PERMISSION = ("unable to open database file", "attempt to write a readonly database")


def error_reason(exc: BaseException) -> str:
    """The first line of what a database error says (its driver's error, else its own; an empty one
    by its type's name): the one line an operator is shown or a log keeps."""
    cause = getattr(exc, "orig", None) or exc
    lines = str(cause).strip().splitlines()
    return lines[0] if lines else type(cause).__name__


def sqlite_hint(url: str, reason: str) -> str:
    """What to look at when SQLite cannot open or write its file: the path and who must own it."""
    if not url.startswith("sqlite") or not reason.startswith(_SQLITE_PERMISSION):
        return ""
    path = sa.engine.make_url(url).database or "?"
    return (f" ({path}: the collector's user must be able to read and write it, its directory, and its "
            "-wal and -shm files)")


def unavailable(exc: DBAPIError) -> bool:
    """Whether a database error means "try again later" (an HTTP 503), not a fault of the request
    or of the code (a missing table, too many variables: a 500 that retrying would not mend)."""
    if exc.connection_invalidated:
        return True
    orig = exc.orig
    code = getattr(orig, "sqlstate", None)
    if isinstance(code, str):
        return code[:2] in _UNAVAILABLE_CLASSES or code in _UNAVAILABLE_CODES
    name = getattr(orig, "sqlite_errorname", None)
    if isinstance(name, str):
        return name.startswith(_SQLITE_UNAVAILABLE)
    # psycopg's error of a connection that failed before any SQLSTATE (refused, reset, timed out)
    return type(orig).__name__ == "OperationalError" and type(orig).__module__.startswith("psycopg")


class Retry(Exception):
    """What a write transaction read before taking its locks changed before it held them: run it
    again (write_tx does), when its first read sees the change."""


def _retryable(exc: Exception) -> bool:
    if isinstance(exc, Retry):
        return True
    if isinstance(exc, IntegrityError):
        return True  # a concurrent writer inserted the same unique row first: redo, it is now a duplicate
    if isinstance(exc, OperationalError | DBAPIError):
        text = str(exc.orig if hasattr(exc, "orig") else exc).lower()
        return any(s in text for s in ("deadlock", "could not serialize", "database is locked", "busy"))
    return False


class _WriterGate:
    """One SQLite writer at a time across this host's processes, handed over as soon as it is free.

    SQLite serialises writers itself, but a writer that finds the database locked sleeps in
    steps of 1 to 100 ms (its busy handler) however soon the lock is free: with two collector
    processes ingesting, a quarter of their CPU sat idle that way (bench/bench_ingest.py). A
    blocking flock on a file beside the database wakes the next writer when the lock is
    released. Correctness does not depend on it (SQLite's own lock still decides): a writer
    that does not take the gate (another program) is just waited for the old way."""

    def __init__(self, path: str) -> None:
        self._thread = threading.Lock()
        self._path = path
        self._fd = -1
        self._pid = -1
        self._owner: int | None = None

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        if self._owner == threading.get_ident():
            yield  # re-entered by the thread that holds it (a flock is not counted)
            return
        with self._thread:
            if self._pid != os.getpid():  # a forked child shares the parent's lock: open its own
                self._fd, self._pid = self._open(), os.getpid()
            if self._fd < 0:  # no gate here: SQLite's own lock still serialises the writers
                yield
                return
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            self._owner = threading.get_ident()
            try:
                yield
            finally:
                self._owner = None
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _open(self) -> int:
        # Read-only is enough for flock, and mode 0644 lets the service and an operator's command
        # run as another user share it; made by root, it goes to the database's owner, as SQLite
        # does with its -wal and -shm files.
        owner = None
        with contextlib.suppress(OSError):
            st = os.stat(self._path.removesuffix(".write.lock"))
            owner = (st.st_uid, st.st_gid)
        try:
            return open_lock(self._path, owner)
        except OSError as exc:
            log.warning("event=writer_gate_unavailable path=%s error=%r: writers wait in SQLite's "
                        "busy handler instead", self._path, exc)
            return -1


_GATES: dict[str, _WriterGate] = {}
_GATES_LOCK = threading.Lock()


def _writer_gate(engine: Engine) -> contextlib.AbstractContextManager[None]:
    db_path = engine.url.database if is_sqlite(engine) else None
    if not db_path or db_path == ":memory:":
        return contextlib.nullcontext()
    with _GATES_LOCK:
        gate = _GATES.get(db_path)
        if gate is None:
            gate = _GATES[db_path] = _WriterGate(db_path + ".write.lock")
    return gate.held()


def write_tx(engine: Engine, fn: Callable[[Connection], T], attempts: int = 8) -> T:
    """Run ``fn`` in one write transaction, retrying it whole on a unique-key race or deadlock."""
    for attempt in range(attempts):
        try:
            with _writer_gate(engine), engine.begin() as conn:
                return fn(conn)
        except Exception as exc:
            if attempt == attempts - 1 or not _retryable(exc):
                raise
            time.sleep(0.01 * (attempt + 1))
    raise AssertionError("unreachable")


@contextlib.contextmanager
def read_conn(engine: Engine) -> Iterator[Connection]:
    """A read-only transaction that sees one snapshot throughout: SQLite's deferred transaction
    does; PostgreSQL's READ COMMITTED default does not (each statement sees new commits), and an
    export read the anchors and the leaves at different moments: its bundle failed verify."""
    options: dict[str, Any] = {"readonly": True}
    if engine.dialect.name == "postgresql":
        options["isolation_level"] = "REPEATABLE READ"
    with engine.connect().execution_options(**options) as conn, conn.begin():
        yield conn


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    return cfg


@contextlib.contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    """Several collector processes may start together on one database: migrate one at a time."""
    if is_sqlite(engine):
        db_path = engine.url.database
        if not db_path or db_path == ":memory:":
            yield
            return
        with open(db_path + ".migrate.lock", "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
        return
    with engine.connect() as conn:
        conn.exec_driver_sql(f"SELECT pg_advisory_lock({_PG_MIGRATE_LOCK})")
        conn.commit()
        try:
            yield
        finally:
            conn.exec_driver_sql(f"SELECT pg_advisory_unlock({_PG_MIGRATE_LOCK})")
            conn.commit()


class UnknownRevision(Exception):
    """The database's schema revision is not one of this release's migrations (a newer one's)."""

    def __init__(self, revision: str) -> None:
        super().__init__(revision)
        self.revision = revision


def migrate(engine: Engine) -> tuple[str | None, str]:
    """Bring the schema to the latest Alembic revision (creates it on an empty database): the
    revisions before (None: no schema) and after, which `migrate` and `serve` say (an upgrade
    printed only "schema up to date", as when nothing was done: an upgrade review)."""
    from alembic.runtime.migration import MigrationContext
    from alembic.util.exc import CommandError

    def revision() -> str | None:
        # on a connection of its own: read on the upgrade's, it began the transaction that alembic
        # then took for the caller's, and ran every migration in it (one commit, not one each)
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    with _migration_lock(engine):
        cfg = alembic_config(engine.url.render_as_string(hide_password=False))
        before = revision()
        with engine.connect() as conn:
            cfg.attributes["connection"] = conn
            try:
                command.upgrade(cfg, "head")
            except CommandError as exc:
                if before is not None and "Can't locate revision" in str(exc):
                    raise UnknownRevision(before) from exc
                raise
            conn.commit()
        after = revision()
    return before, str(after)
