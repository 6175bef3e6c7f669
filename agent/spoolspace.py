"""The spool's room on disk, mixed into Spool: WAL checkpoints, free pages given back, its sizes."""

import contextlib
import logging
import os
import sqlite3
import time
from pathlib import Path

from agent.spooltypes import spool_error

log = logging.getLogger("tr7.agent.spool")  # the spool's own: these are Spool's methods
INCREMENTAL = 2  # PRAGMA auto_vacuum's value for INCREMENTAL
SHRINK_STEP = 64  # pages a step of Spool.shrink moves and gives back
CHECKPOINT_WAIT_MS = 200  # how long Spool.checkpoint waits for readers before giving up for now
RECLAIM_PAGES = 256  # free pages (1 MiB of 4 KiB pages) before shipping hands them back
CONVERT_BELOW = 64 * 1024 * 1024  # live bytes under which an older spool.db is VACUUMed at open


class SpoolSpace:
    """Mixed into agent.spool.Spool, whose connection and path these are."""

    db: sqlite3.Connection
    path: Path

    def checkpoint(self) -> bool:
        """The WAL into the file and cut to nothing, if that can be done at once (best effort): on a
        full disk, the room the WAL took is free again for the next step. Waited for at most
        CHECKPOINT_WAIT_MS: a TRUNCATE checkpoint that waits for a reader (an `export`) holds off
        the other thread's writes meanwhile, and a heartbeat's commit waiting 30 s for it failed."""
        try:
            self.db.execute(f"PRAGMA busy_timeout={CHECKPOINT_WAIT_MS}")
            try:
                busy = self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            finally:
                self.db.execute("PRAGMA busy_timeout=30000")
        except sqlite3.Error as exc:
            log.warning("event=spool_not_checkpointed reason=%r", str(exc))
            return False
        return not busy

    def shrink(self, seconds: float = 10.0) -> None:
        """Hand the free pages back to the file system now, SHRINK_STEP pages at a time with the
        WAL cut between steps, for at most ``seconds``: on a full disk, what shipping frees must be
        free at once, and the vacuum needs room in the WAL for the pages it moves. What is left is
        given back by the next call, or by _reclaim."""
        deadline = time.monotonic() + seconds
        if not self.checkpoint():
            return
        try:
            while time.monotonic() < deadline and self.db.execute("PRAGMA freelist_count").fetchone()[0]:
                self.db.executescript(f"PRAGMA incremental_vacuum({SHRINK_STEP});")
                if not self.checkpoint():
                    return
        except sqlite3.Error as exc:
            log.warning("event=spool_not_shrunk reason=%r", str(exc))

    def _convert(self) -> None:
        """A spool.db made before incremental auto-vacuum (2026-12-06) takes it by one VACUUM, done
        when the spool is small (it rewrites the whole file under an exclusive lock): not in the middle
        of an outage's backlog, at a start after it shipped."""
        if self.db.execute("PRAGMA auto_vacuum").fetchone()[0] == INCREMENTAL:
            return
        used = self.used_bytes()
        if used > CONVERT_BELOW:
            log.info("event=spool_vacuum_deferred bytes=%d reason='a backlog: done at a later start'", used)
            return
        try:
            self.db.execute("VACUUM")
        except sqlite3.Error as exc:  # busy (a `status` reading it), no room for its copy: next start
            log.warning("event=spool_vacuum_deferred reason=%r", str(exc))
            return
        log.info("event=spool_vacuumed auto_vacuum=incremental bytes=%d", self.size_bytes())

    def _reclaim(self) -> None:
        """Hand the pages of shipped rows back to the file system once there are RECLAIM_PAGES of them:
        after an outage the files kept the backlog's size for good (a disk filled by a week of spool
        stayed full). Best effort: a spool that cannot shrink now still works, and tries again."""
        try:
            if self.db.execute("PRAGMA freelist_count").fetchone()[0] >= RECLAIM_PAGES:
                # executescript steps it to its end (sqlite3_exec): execute() frees a single page
                self.db.executescript("PRAGMA incremental_vacuum;")
        except sqlite3.Error as exc:
            log.warning("event=spool_not_shrunk reason=%r", str(exc))

    def used_bytes(self) -> int:
        """Bytes of the spool's live pages (its rows, not the pages freed by shipping that SQLite has
        not yet handed back, see _reclaim): what `spool_limit_mb` is about. The size of the files
        stayed above the limit after an outage's backlog had shipped, and the alarm with it."""
        try:
            pages, free, size = (self.db.execute(f"PRAGMA {p}").fetchone()[0]
                                 for p in ("page_count", "freelist_count", "page_size"))
        except sqlite3.Error as exc:
            raise spool_error(exc, self.path, "cannot read its size") from exc
        return int((pages - free) * size)

    def size_bytes(self) -> int:
        """Bytes of the spool's files on disk (spool.db and its WAL)."""
        total = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                total += os.path.getsize(f"{self.path}{suffix}")
        return total
