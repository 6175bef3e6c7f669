"""What the spool raises and hands out (SpoolError, ClockBehind, Head, Row), and how it stores a heartbeat."""

import sqlite3
import zlib
from dataclasses import dataclass
from pathlib import Path

from protocol.timefmt import format_time


class SpoolError(Exception):
    """The spool cannot be used (corrupt, unwritable, disk full): the agent must stop loudly."""


class ClockBehind(Exception):
    """The poll instant is not after the previous heartbeat's time: nothing was signed."""

    def __init__(self, when: int, last: int) -> None:
        super().__init__(f"poll instant {format_time(when)} is not after the last heartbeat's "
                         f"{format_time(last)}")
        self.when, self.last = when, last


@dataclass(frozen=True)
class Head:
    seq: int
    digest: str
    time: int | None


@dataclass(frozen=True)
class Row:
    id: int
    kid: str
    seq: int
    token: str


def pack(token: str) -> bytes:
    # zlib: a heartbeat of 500 real-looking instances goes from ~140 kB to ~25 kB, so a month-long
    # outage fits in a few hundred MiB; the JWS comes back byte for byte (its digest is the chain).
    return zlib.compress(token.encode("ascii"), 6)


def unpack(packed: bytes) -> str:
    return zlib.decompress(packed).decode("ascii")


# A row whose bytes no longer inflate to ASCII (a bad sector, a bit flipped under SQLite's page):
# PRAGMA quick_check does not look inside values.
DAMAGE = (zlib.error, UnicodeDecodeError)


def spool_error(exc: sqlite3.Error, path: Path, what: str) -> SpoolError:
    return SpoolError(f"spool {path}: {what}: {exc}")
