"""Where the collector keeps its key and database: --data-dir / --db and their environment twins."""

import os
import re
import socket
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from sqlalchemy.engine import Engine

from collector import db
from protocol.keys import AgentKey, load_or_create_private_key

ENV_DATA_DIR = "TR7_COLLECTOR_DATA_DIR"
ENV_DB = "TR7_COLLECTOR_DB"
ENV_ORIGIN = "TR7_COLLECTOR_ORIGIN"
DEFAULT_DATA_DIR = "/var/lib/tr7-collector"
_ORIGIN_RE = re.compile(r"^[A-Za-z0-9._-]+\Z")  # \Z, not $: a final newline would end the note line


class SetupError(Exception):
    """The data directory or the database cannot be used as configured."""


@dataclass
class Settings:
    data_dir: Path
    db_url: str
    origin_override: str | None = None

    @classmethod
    def resolve(cls, data_dir: str | None, db_url: str | None, origin: str | None = None) -> "Settings":
        d = Path(data_dir or os.environ.get(ENV_DATA_DIR) or DEFAULT_DATA_DIR)
        url = db_url or os.environ.get(ENV_DB) or f"sqlite:///{d.resolve() / 'collector.db'}"
        return cls(d, url, origin or os.environ.get(ENV_ORIGIN))

    def ensure_dir(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    @cached_property
    def origin(self) -> str:
        """The note name of the collector's key, fixed at first use (it is part of every checkpoint)."""
        self.ensure_dir()
        path = self.data_dir / "origin"
        if path.exists():
            stored = path.read_text().strip()
            if self.origin_override and self.origin_override != stored:
                raise SetupError(f"the collector origin is {stored!r} (fixed in {path}); cannot change it")
            return stored
        origin = self.origin_override or socket.gethostname() or "tr7-collector"
        if not _ORIGIN_RE.match(origin):
            raise SetupError(f"collector origin {origin!r} must be [A-Za-z0-9._-]+")
        path.write_text(origin + "\n")
        return origin

    @cached_property
    def key(self) -> AgentKey:
        self.ensure_dir()
        key, _created = load_or_create_private_key(self.data_dir / "collector.key")
        return key

    @cached_property
    def engine(self) -> Engine:
        self.ensure_dir()
        return db.make_engine(self.db_url)

    def open(self, migrate: bool = True) -> Engine:
        """Key, origin and schema exist after this (the first command on an empty dir creates them)."""
        _ = self.key, self.origin
        if migrate:
            db.migrate(self.engine)
        return self.engine
