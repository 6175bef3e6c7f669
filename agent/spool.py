"""The durable spool: SQLite (WAL, synchronous=FULL) holding the chain head and unshipped heartbeats.

One transaction allocates `seq`, computes `prev`, signs and inserts: a crash at any point either
leaves the heartbeat committed (and the head advanced) or leaves nothing, so the chain continues
with no reused and no skipped `seq`. A signature made inside a transaction that rolled back never
left the process, so its `seq` being signed again later is not a fork.
"""

import base64
import contextlib
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from agent import diskreserve, signedkeys
from agent.spoolspace import INCREMENTAL, SpoolSpace
from agent.spooltypes import DAMAGE, ClockBehind, Head, Row, SpoolError, pack, spool_error, unpack
from protocol.errors import ProtocolError
from protocol.heartbeat import MAX_REQUEST_BYTES, ZERO_HASH, sign_heartbeat, token_digest
from protocol.keys import AgentKey
from protocol.timefmt import format_time

log = logging.getLogger("tr7.agent.spool")
WAL_PAGES = 256  # pages (1 MiB) the WAL holds before a checkpoint; SQLite's default is 1,000

SCHEMA = """
CREATE TABLE IF NOT EXISTS chain (kid TEXT PRIMARY KEY, seq INTEGER NOT NULL, digest TEXT NOT NULL,
                                  time INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS spool (id INTEGER PRIMARY KEY AUTOINCREMENT, kid TEXT NOT NULL,
                                  seq INTEGER NOT NULL, time INTEGER NOT NULL, signed_at REAL NOT NULL,
                                  jws_z BLOB NOT NULL, UNIQUE (kid, seq));
CREATE TABLE IF NOT EXISTS rejected (id INTEGER PRIMARY KEY, kid TEXT NOT NULL, seq INTEGER NOT NULL,
                                     token TEXT NOT NULL, reason TEXT NOT NULL, at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY AUTOINCREMENT, at INTEGER NOT NULL,
                                   kind TEXT NOT NULL, detail TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class Spool(SpoolSpace):
    """One connection to spool.db; use one instance per thread (its room on disk: SpoolSpace)."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        self.damaged: list[int] = []  # seqs unshipped() could not read
        # Test seam: called with a stage name inside the signing transaction.
        self.fault: Callable[[str], None] | None = None
        try:
            if readonly:
                self.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None,
                                          check_same_thread=False)
            else:
                self.db = sqlite3.connect(path, isolation_level=None, timeout=30, check_same_thread=False)
                # Before anything is written: a new spool.db gives the pages its shipped rows free back
                # to the file system (_reclaim). An older one takes it at its next VACUUM (_convert).
                # Only when it differs: setting it writes page 1 even when unchanged, and a spool on a
                # disk with room for its -shm but not for that write could not open (a review).
                if self.db.execute("PRAGMA auto_vacuum").fetchone()[0] != INCREMENTAL:
                    self.db.execute("PRAGMA auto_vacuum=INCREMENTAL")
                mode = self.db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if mode != "wal":
                    raise SpoolError(f"spool {path}: cannot use WAL journal mode (got {mode})")
                self.db.execute("PRAGMA synchronous=FULL")
                # The WAL file back to 4 MiB after each checkpoint: left alone it keeps its
                # largest size (a backlog shipped after an outage) for good.
                self.db.execute("PRAGMA journal_size_limit=4194304")
                # Checkpoints every WAL_PAGES pages: the WAL's pages past the file's end need that much
                # room again to be checkpointed, which a full disk has only from the reserve (diskreserve)
                self.db.execute(f"PRAGMA wal_autocheckpoint={WAL_PAGES}")
            self.db.execute("PRAGMA busy_timeout=30000")
            check = self.db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise SpoolError(f"spool {path} is corrupt: {check}")
            if not readonly:
                self.db.executescript(SCHEMA)
                # One real write now: SQLite opens a file it may not write read-only without a
                # word, and an agent started on a spool.db left root's by a hand-run `run` said
                # ready, then died at its first poll, restarted, and died again.
                self._opened()
                self._convert()
        except sqlite3.Error as exc:
            unwritable = isinstance(exc, sqlite3.OperationalError) and "readonly" in str(exc)
            what = ("cannot write it (its owner or mode: the service's user must own spool.db and its "
                    "-wal and -shm files)") if unwritable else "cannot open"
            if diskreserve.is_full(exc, path.parent):  # its -shm file cannot be made: not a damaged spool
                what = (f"cannot open it: the file system of {path.parent} is full (the spool is not "
                        "damaged: free some space, and it opens and ships)")
            raise spool_error(exc, path, what) from exc

    def _opened(self) -> None:
        try:
            self.db.execute("BEGIN IMMEDIATE")
            self._set("opened_at", str(int(time.time())))
            self.db.execute("COMMIT")
        except sqlite3.Error as exc:
            if not diskreserve.is_full(exc, self.path.parent):
                raise
            # A full disk is not an unwritable file: the spool is read and shipped as it is (what
            # frees the disk), and `export` still writes its heartbeats elsewhere.
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            log.warning("event=disk_full at=open path=%s", self.path)

    def close(self) -> None:
        self.db.close()

    def _stage(self, name: str) -> None:
        if self.fault is not None:
            self.fault(name)

    @contextlib.contextmanager
    def _transaction(self, what: str) -> Iterator[None]:
        """One IMMEDIATE transaction, committed when the block ends, rolled back on any exception;
        SQLite's errors become SpoolError saying ``what`` could not be done."""
        try:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield
                self.db.execute("COMMIT")
            except BaseException:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise spool_error(exc, self.path, what) from exc

    def head(self, kid: str) -> Head:
        row = self.db.execute("SELECT seq, digest, time FROM chain WHERE kid = ?", (kid,)).fetchone()
        return Head(*row) if row else Head(0, ZERO_HASH, None)

    def append(self, key: AgentKey, when: int, interval: int, polls: list[dict[str, Any]],
               observations: list[dict[str, Any]], *, back: bool = False) -> tuple[int, str]:
        """Sign the next heartbeat of ``key`` and commit it with the new chain head, atomically.
        ``back``: even if ``when`` is not after the head's time (heartbeat-v1.md §3 rule 5: an
        alert, not a quarantine); else ClockBehind."""
        with self._transaction("cannot commit a heartbeat"):
            head = self.head(key.kid)
            if head.time is not None and when <= head.time and not back:
                raise ClockBehind(when, head.time)
            seq = head.seq + 1
            self._stage("allocated")
            payload = {"v": 1, "agent": key.kid, "seq": seq, "prev": head.digest,
                       "time": format_time(when), "interval": interval, "polls": polls,
                       "observations": observations}
            token = sign_heartbeat(key, payload)
            if len(token) + 1 > MAX_REQUEST_BYTES:
                # no collector may take it (§4): the caller signs the slot without observations
                raise ProtocolError("jws.size", f"the heartbeat is {len(token)} bytes; "
                                    f"heartbeat-v1.md §4 takes at most {MAX_REQUEST_BYTES} a request")
            self._stage("signed")
            self.db.execute("INSERT INTO spool (kid, seq, time, signed_at, jws_z) VALUES (?,?,?,?,?)",
                            (key.kid, seq, when, time.time(), pack(token)))
            self.db.execute(
                "INSERT INTO chain (kid, seq, digest, time) VALUES (?,?,?,?) ON CONFLICT (kid) "
                "DO UPDATE SET seq = excluded.seq, digest = excluded.digest, time = excluded.time",
                (key.kid, seq, token_digest(token), when))
            self._set("last_poll", str(when))
            self._stage("inserted")
        # after the commit: a crash before this line leaves the record one seq behind the spool,
        # never ahead of it (signedkeys: an older spool.db is refused by this record)
        try:
            signedkeys.signed(self.path.parent, key.kid, seq)
        except OSError as exc:
            if diskreserve.is_full(exc):
                # The record may lag the spool (never lead it): the next seq recorded catches up,
                # and a start reads a lag as the crash window it is. The heartbeat is committed.
                log.warning("event=disk_full at=signed_heads seq=%d", seq)
                return seq, token
            raise SpoolError(f"spool {self.path}: seq {seq} is committed, but {signedkeys.HEADS} beside it "
                             f"cannot record it: {exc}") from exc
        return seq, token

    def _set(self, key: str, value: str) -> None:
        self.db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) "
                        "DO UPDATE SET value = excluded.value", (key, value))

    def get(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def record_event(self, kind: str, detail: str) -> None:
        try:
            self.db.execute("INSERT INTO events (at, kind, detail) VALUES (?,?,?)",
                            (int(time.time()), kind, detail))
        except sqlite3.Error as exc:
            if diskreserve.is_full(exc, self.path.parent):  # said in the log; not worth stopping for
                log.warning("event=disk_full at=record_event kind=%s detail=%s", kind, detail)
                return
            raise spool_error(exc, self.path, "cannot record an event") from exc

    def batch(self, limit: int = 5000, max_bytes: int = MAX_REQUEST_BYTES, after: int = 0) -> list[Row]:
        """The oldest unshipped rows (with an id above ``after``), at most ``limit`` lines and
        ``max_bytes`` of body (§4)."""
        rows: list[Row] = []
        damaged: list[tuple[int, str, int, bytes, Exception]] = []
        size = 0
        for rid, kid, seq, packed in self.db.execute("SELECT id, kid, seq, jws_z FROM spool WHERE id > ? "
                                                     "ORDER BY id LIMIT ?", (after, limit)):
            try:
                token = unpack(packed)
            except DAMAGE as exc:
                damaged.append((rid, kid, seq, packed, exc))
                continue
            size += len(token) + 1
            if rows and size > max_bytes:
                break
            rows.append(Row(rid, kid, seq, token))
        for bad in damaged:  # after the read: no write under an open read cursor
            self._set_aside_damaged(*bad)
        return rows

    def any_after(self, last: int) -> bool:
        """Whether a row with an id above ``last`` is still in the spool."""
        return self.db.execute("SELECT 1 FROM spool WHERE id > ? LIMIT 1", (last,)).fetchone() is not None

    def unshipped(self) -> Iterable[str]:
        """Every readable unshipped heartbeat, in order; the seqs of damaged rows go to ``damaged``."""
        self.damaged = []
        for seq, packed in self.db.execute("SELECT seq, jws_z FROM spool ORDER BY id"):
            try:
                yield unpack(packed)
            except DAMAGE:
                self.damaged.append(seq)

    def _set_aside_damaged(self, rid: int, kid: str, seq: int, packed: bytes, exc: Exception) -> None:
        """Move a row that cannot be read to `rejected` (its bytes kept, base64): shipping goes on
        past it. It stopped the shipper, and the agent at every start, for good."""
        reason = f"spool.damaged: the stored heartbeat cannot be read ({type(exc).__name__}: {exc})"
        log.error("event=spool_row_damaged kid=%s seq=%d reason=%r action='set aside; the collector will "
                  "see a gap'", kid, seq, reason)
        self.settle([(Row(rid, kid, seq, base64.b64encode(packed).decode("ascii")), "rejected", reason)])

    def settle(self, outcomes: list[tuple[Row, str, str | None]], reclaim: bool = True) -> None:
        """Apply the collector's answers in one transaction: delete accepted/duplicate, set aside
        rejected (a rejected heartbeat is never resent). ``reclaim``: hand free pages back after
        (_reclaim); the shipper on a full disk does that itself, in steps (shrink)."""
        with self._transaction("cannot record shipping outcomes"):
            shipped = 0
            for row, status, reason in outcomes:
                if status == "rejected":
                    self.db.execute("INSERT OR REPLACE INTO rejected (id, kid, seq, token, reason, at) "
                                    "VALUES (?,?,?,?,?,?)",
                                    (row.id, row.kid, row.seq, row.token, reason or "", int(time.time())))
                else:
                    shipped = max(shipped, row.seq)
                self.db.execute("DELETE FROM spool WHERE id = ?", (row.id,))
            if shipped:
                self._set("last_shipped_seq", str(shipped))
        if reclaim:
            self._reclaim()

    def rejected_rows(self) -> list[tuple[int, str, int, int, str, str]]:
        """(id, kid, seq, at, reason, token) of every heartbeat set aside, oldest first."""
        return self.db.execute("SELECT id, kid, seq, at, reason, token FROM rejected ORDER BY id").fetchall()

    def drop_rejected(self, ids: Iterable[int]) -> int:
        """Delete these set-aside heartbeats (only these: the service may set more aside meanwhile)."""
        with self._transaction("cannot clear rejected heartbeats"):
            return sum(self.db.execute("DELETE FROM rejected WHERE id = ?", (i,)).rowcount for i in ids)

    def stats(self) -> dict[str, Any]:
        depth, oldest = self.db.execute("SELECT count(*), min(signed_at) FROM spool").fetchone()
        reasons = self.db.execute("SELECT reason, count(*) FROM rejected GROUP BY reason").fetchall()
        events = self.db.execute("SELECT at, kind, detail FROM events ORDER BY id DESC LIMIT 20").fetchall()
        last_poll = self.get("last_poll")
        shipped = self.get("last_shipped_seq")
        return {
            "last_poll": format_time(int(last_poll)) if last_poll else None,
            "last_shipped_seq": int(shipped) if shipped else None,
            "spool_depth": depth,
            "oldest_unshipped_age_s": round(time.time() - oldest, 1) if oldest else None,
            "spool_bytes": self.used_bytes(),
            "rejected": {"count": sum(n for _, n in reasons), "reasons": dict(reasons)},
            "clock_events": [{"at": format_time(at), "kind": k, "detail": json.loads(d) if d[:1] == "{"
                              else d} for at, k, d in events],
        }
