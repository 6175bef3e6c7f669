"""Where the collector keeps its key and database: --data-dir / --db and their environment twins."""

import contextlib
import os
import re
import socket
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError

from collector import db
from collector import schema as s
from protocol.keys import AgentKey, create_file_once, load_or_create_private_key, remove_stale_temps
from protocol.timefmt import format_time

ENV_DATA_DIR = "TR7_COLLECTOR_DATA_DIR"
ENV_DB = "TR7_COLLECTOR_DB"
ENV_ORIGIN = "TR7_COLLECTOR_ORIGIN"
ENV_LISTEN = "TR7_COLLECTOR_LISTEN"
ENV_PROXIES = "TR7_COLLECTOR_FORWARDED_ALLOW_IPS"  # uvicorn's forwarded_allow_ips
ENV_FILE = "TR7_COLLECTOR_ENV_FILE"
ENV_BODY_TIMEOUT = "TR7_COLLECTOR_BODY_TIMEOUT"  # collector/requestguard.py BodyDeadline
ENV_BODY_MIN_RATE = "TR7_COLLECTOR_BODY_MIN_RATE"
ENV_HEADER_TIMEOUT = "TR7_COLLECTOR_HEADER_TIMEOUT"  # collector/headerdeadline.py
DEFAULT_ENV_FILE = "/etc/tr7-collector/collector.env"  # the service's EnvironmentFile (packaged)
DEFAULT_DATA_DIR = "/var/lib/tr7-collector"
IDENTITY = "collector_verifier_key"  # meta row: name+keyid+key of the key signing checkpoints
IDENTITY_ROW = sa.select(s.meta.c.value).where(s.meta.c.key == IDENTITY)  # .scalar(): None before a claim
# The data directory's files written whole (protocol.keys.replace_file, create_file_once): the key,
# the next key of a rotation (keyrotation.NEXT_KEY), the origin, the marks (highwater.FILE).
_WHOLE_FILES = ("collector.key", "collector.key.next", "origin", "highwater.json")
_ORIGIN_RE = re.compile(r"^[A-Za-z0-9._-]+\Z")  # \Z, not $: a final newline would end the note line


class SetupError(Exception):
    """The data directory or the database cannot be used as configured."""


def env_file() -> dict[str, str]:
    """The TR7_COLLECTOR_* settings of the service's environment file (TR7_COLLECTOR_ENV_FILE, by
    default /etc/tr7-collector/collector.env), which operator commands run from a shell read too:
    with the database set only there, they created an empty SQLite database of their own.

    systemd's EnvironmentFile syntax, the part such a file uses: KEY=VALUE lines, `#` or `;`
    comments, a value optionally in single or double quotes (no escapes, no continuation lines).
    Hand-written rather than python-dotenv, whose syntax (export, interpolation) is not systemd's.
    An unreadable file (an operator without the rights) counts as absent."""
    try:
        text = Path(os.environ.get(ENV_FILE) or DEFAULT_ENV_FILE).read_text()
    except (OSError, UnicodeDecodeError):
        return {}
    out = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;" or "=" not in line:
            continue
        key, _, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        if key.startswith("TR7_COLLECTOR_") and value:
            out[key] = value
    return out


def setting(name: str) -> str | None:
    """One setting from the environment, else from the service's environment file."""
    return os.environ.get(name) or env_file().get(name)


def body_timeout() -> float:
    """TR7_COLLECTOR_BODY_TIMEOUT: the seconds a request body may go without a byte, and its grace
    before a minimum rate applies (collector/requestguard.py); default 60. `serve` checks it
    before any worker starts (SetupError: one line)."""
    return _seconds(ENV_BODY_TIMEOUT, "60")


def header_timeout() -> float:
    """TR7_COLLECTOR_HEADER_TIMEOUT: the seconds a request's headers may take in all, from its
    first byte (collector/headerdeadline.py); default 20. Checked by `serve` as the body's."""
    return _seconds(ENV_HEADER_TIMEOUT, "20")


def _seconds(name: str, default: str) -> float:
    text = (setting(name) or default).strip()
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 3600:  # also refuses nan; inf is past 3600
        raise SetupError(f"{name}={text!r} must be a number of seconds, over 0 and at most 3600")
    return value


def body_min_rate() -> int:
    """TR7_COLLECTOR_BODY_MIN_RATE: the bytes a second a request body must average once its
    grace has passed (collector/requestguard.py); default 1000, 0 for none."""
    text = (setting(ENV_BODY_MIN_RATE) or "1000").strip()
    if not text.isdigit():
        raise SetupError(f"{ENV_BODY_MIN_RATE}={text!r} must be a whole number of bytes a second (0: none)")
    return int(text)


@dataclass
class Settings:
    data_dir: Path
    db_url: str
    origin_override: str | None = None
    db_defaulted: bool = False  # no --db nor TR7_COLLECTOR_DB: the SQLite file in the data dir
    # the schema's revisions before and after open()'s migration (None before: there was none)
    migrated: tuple[str | None, str] | None = field(default=None, init=False, repr=False, compare=False)
    _temps_checked: bool = field(default=False, init=False, repr=False, compare=False)

    @classmethod
    def resolve(cls, data_dir: str | None, db_url: str | None, origin: str | None = None) -> "Settings":
        d = Path(data_dir or setting(ENV_DATA_DIR) or DEFAULT_DATA_DIR)
        url = db_url or setting(ENV_DB)
        default = f"sqlite:///{d.resolve() / 'collector.db'}"
        return cls(d, url or default, origin or setting(ENV_ORIGIN), db_defaulted=url is None)

    def ensure_dir(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not self._temps_checked:
            self._temps_checked = True
            # Files written whole through a temporary one of their writer's (protocol.keys): one
            # killed before its rename left its file (a key's copy, even) that nothing removed.
            for name in _WHOLE_FILES:
                with contextlib.suppress(OSError):
                    remove_stale_temps(self.data_dir / name)

    @cached_property
    def origin(self) -> str:
        """The note name of the collector's key, fixed at first use (it is part of every checkpoint)."""
        self.ensure_dir()
        path = self.data_dir / "origin"
        if path.exists():
            stored = path.read_text().strip()
            if not _ORIGIN_RE.match(stored):  # emptied or damaged: restored by hand, a full disk
                raise SetupError(f"{path} holds no collector origin ({stored[:40]!r}): restore it from the "
                                 "backup with collector.key (docs/collector.md, Backup and restore)")
            if self.origin_override and self.origin_override != stored:
                raise SetupError(f"the collector origin is {stored!r} (fixed in {path}); cannot change it")
            return stored
        origin = self.origin_override or socket.gethostname() or "tr7-collector"
        if not _ORIGIN_RE.match(origin):
            raise SetupError(f"collector origin {origin!r} must be [A-Za-z0-9._-]+")
        if not create_file_once((origin + "\n").encode(), path):  # another process was first
            return self.origin
        return origin

    @cached_property
    def key(self) -> AgentKey:
        self.ensure_dir()
        path = self.data_dir / "collector.key"
        try:
            key, _created = load_or_create_private_key(path)
        except ValueError as exc:  # emptied or damaged: a bad restore, a full disk
            raise SetupError(f"{path} is not a collector key ({exc}): restore it from the backup "
                             "(docs/collector.md, Backup and restore)") from None
        return key

    @cached_property
    def engine(self) -> Engine:
        # Only the two engines the collector is built and tested for: ingest speaks psycopg 3's
        # own COPY and binary parameters, and any other driver (psycopg2, asyncpg, a MySQL URL)
        # failed later, mid-request. Errors show only the names SQLAlchemy parsed, never the URL:
        # it holds a password, and the line lands in the service's log.
        try:
            url = make_url(db.normalise_url(self.db_url))
        except (ArgumentError, ValueError):  # ValueError: a port that is no number (a forgotten @)
            raise SetupError(
                "--db is not a database URL: give sqlite:///PATH or postgresql://USER@HOST/DB"
            ) from None
        if "@" in (url.host or ""):  # the driver's error would name the host: the password's end
            raise SetupError("--db: percent-encode an '@' in the user name or password as %40")
        try:
            engine = (url.get_backend_name(), url.get_driver_name())
        except ArgumentError:  # a backend SQLAlchemy does not know at all
            engine = (url.get_backend_name(), "")
        if engine not in (("sqlite", "pysqlite"), ("postgresql", "psycopg")):
            raise SetupError(
                f"--db {url.drivername}://... is not supported: give sqlite:///PATH or "
                "postgresql://... (PostgreSQL through psycopg 3)"
            )
        self.ensure_dir()
        return db.make_engine(self.db_url)

    def open(self, migrate: bool = True, highwater: bool = True) -> Engine:
        """Key, origin and schema exist after this (the first command on an empty dir creates them).

        ``highwater``: refuse a database whose logs are shorter than this data directory has seen
        (collector/highwater.py), and record what the engine commits from now on."""
        self._refuse_a_second_database()
        if not (self.data_dir / "collector.key").exists():
            self._refuse_a_new_key()
        _ = self.origin, self.key  # the origin first: a refused one leaves no key behind
        if migrate:
            try:
                self.migrated = db.migrate(self.engine)
            except db.UnknownRevision as exc:
                raise SetupError(
                    f"this database's schema is at revision {exc.revision!r}, which this tr7-collector "
                    "does not know: a newer release migrated it. Run that release or a later one "
                    "(a database is never migrated down: see docs/collector.md, Backup and restore)"
                ) from exc
            db.write_tx(self.engine, self._claim_identity)
        if highwater:
            self._check_highwater(create=migrate)
        return self.engine

    def _check_highwater(self, create: bool) -> None:
        from collector import highwater as hw

        try:
            if create:
                db.write_tx(self.engine, lambda c: hw.attach(self.engine, self.data_dir, c, create=True))
            else:
                with db.read_conn(self.engine) as conn:
                    hw.attach(self.engine, self.data_dir, conn, create=False)
        except hw.Unreadable as exc:
            raise SetupError(
                f"the high-water mark {exc.path} {exc.reason}, so a database restored from an older "
                "backup could not be told from the latest. Make it readable by the collector's user "
                "(chown it and highwater.lock to that user); if it is damaged, `tr7-collector "
                "accept-restore` writes it again from this database (docs/collector.md, Backup and "
                "restore)"
            ) from exc
        except hw.Rewound as exc:
            raise SetupError(
                f"the database is behind what {self.data_dir} has seen ({hw.describe(exc.shrunk)}): "
                "restored from an older backup, or another copy? Heartbeats accepted since are not in "
                "it (agents have dropped them), and checkpoints already signed for these logs describe "
                "other trees. Restore a newer backup; or, to go on from this one knowingly, run "
                "`tr7-collector accept-restore` (docs/collector.md, Backup and restore)"
            ) from exc

    def _refuse_a_new_key(self) -> None:
        """A database whose checkpoints some key already signs gets no new key from a data dir that
        lost its own (a new key was written, then every command refused, and the old key had to
        be copied over the new one): the key is the one thing a backup must not miss."""
        if self.db_defaulted and not (self.data_dir / "collector.db").exists():
            return  # a new collector (or refused above)
        try:
            if not sa.inspect(self.engine).has_table(s.meta.name):
                return
            with db.read_conn(self.engine) as conn:
                row = conn.execute(IDENTITY_ROW).scalar()
        except sa.exc.OperationalError:
            return  # unreachable: the command's own use of the database says so
        # Looked at again after the database: a process starting beside this one on the same new
        # data dir writes the key before it claims the database, so a claim seen here with no key
        # file even now is a key lost (read before, its claim made this refuse a sibling).
        if row is not None and not (self.data_dir / "collector.key").exists():
            from collector.keyrotation import finish_interrupted

            # `key replace` of a lost key committed, its collector.key.next not yet renamed: finish
            # (its origin was written before the commit; without one, nothing can be recognised)
            if (self.data_dir / "origin").exists() and finish_interrupted(self, row):
                return
            raise SetupError(
                f"{self.data_dir} has no collector.key, and this database's checkpoints are signed by "
                f"collector key {row.split('+')[0]!r} ({row}): copy collector.key and origin from the "
                "data directory that has them (another host on this database, or the backup: "
                "docs/collector.md, Backup and restore). A new key made here would not be the key "
                "auditors pinned; if no copy is left, `tr7-collector key replace --reason TEXT` makes "
                "one that cosigns every stored checkpoint (docs/collector.md, Replacing a lost or "
                "compromised key)"
            )

    def _refuse_a_second_database(self) -> None:
        """A data directory whose key exists but whose default SQLite file does not belongs to a
        collector with its database elsewhere: a command that was not told where would make an
        empty one beside it and report success (a catalog applied, a token made, a month closed
        in a database the service never reads)."""
        db_file = self.data_dir / "collector.db"
        if self.db_defaulted and (self.data_dir / "collector.key").exists() and not db_file.exists():
            raise SetupError(
                f"{self.data_dir} holds a collector key but no database {db_file}: its collector "
                f"keeps its database elsewhere ({ENV_DB}, e.g. in {DEFAULT_ENV_FILE} for the service). "
                f"Pass --db URL or set {ENV_DB}; to start a new SQLite database here on purpose, "
                f"pass --db sqlite:///{db_file.resolve()}"
            )

    def _claim_identity(self, conn: Connection) -> None:
        """The database keeps the origin and verifier key its checkpoints are signed with, from the
        first process that opens it, and refuses a data directory with others: hosts sharing one
        PostgreSQL each made their own key, and a checkpoint one of them stored broke the audit
        bundles the others exported (signed by a key not in their collector.pub)."""
        from collector.tlog import signer  # tlog imports this module

        mine = signer(self).verifier_key()
        row = conn.execute(IDENTITY_ROW).scalar()
        if row is None:
            conn.execute(s.meta.insert().values(key=IDENTITY, value=mine))  # a race: write_tx retries
        elif row != mine:
            from collector.keyrotation import finish_interrupted, retired_keys

            if finish_interrupted(self, row):  # a rotation committed, its key file not yet renamed
                return
            when = [r["retired_at"] for r in retired_keys(conn) if r["vkey"] == mine]
            if when:
                raise SetupError(
                    f"the checkpoint key in {self.data_dir} ({mine}) was retired by `tr7-collector key "
                    f"rotate` or `key replace` at {format_time(when[-1])}; this database's key is now "
                    f"{row}. Copy collector.key from the data directory where that ran"
                )
            raise SetupError(
                f"this database's checkpoints are signed by collector key {row.split('+')[0]!r} "
                f"({row}); the data directory {self.data_dir} holds another ({mine}): every collector "
                "process on one database must share collector.key and origin (copy them from the "
                "first host's data directory)"
            )


def schema_line(migrated: tuple[str | None, str] | None, where: str) -> str:
    """What `migrate` printed, and `serve` says at start: from which revision to which."""
    before, after = migrated or (None, "?")
    if before == after:
        return f"schema up to date ({after}) on {where}"
    if before is None:
        return f"schema created ({after}) on {where}"
    return f"schema upgraded from {before} to {after} on {where}"
