"""A reserve file in the state directory, given up when the disk fills so that the spool can still ship.

Why: SQLite needs room to delete rows (the WAL takes the changed pages first), so a spool that
filled its disk could not record what it had shipped, and the agent could never empty it again
(a review: every start refused, and the space an operator freed was eaten by failed writes).
The reserve is that room, set aside while there is plenty: unlinked at the first `disk full`, it
lets the shipper record its shipments and hand the freed pages back, and signing resumes once
the disk has room to make it again (and HEADROOM beside it).
"""

import errno
import logging
import os
import shutil
import sqlite3
from pathlib import Path

log = logging.getLogger("tr7.agent.diskreserve")

NAME = "disk-reserve"
SIZE = 8 << 20  # bytes: a shipment's deletions and the vacuum after them, with room to spare
HEADROOM = 1 << 20  # bytes left free beside a reserve made: the spool's next heartbeats
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_full(exc: BaseException) -> bool:
    """Whether ``exc``, or what it was raised from, says the disk (or the user's quota) is full."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _FULL_ERRNOS:
            return True
        if isinstance(e, sqlite3.Error) and getattr(e, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
            return True
        e = e.__cause__ or e.__context__
    return False


def ensure(state_dir: Path) -> bool:
    """Make the reserve unless it is there, or the disk lacks room for it and HEADROOM beside (it
    would itself fill the disk). Best effort: False when it is not there now."""
    path = state_dir / NAME
    try:
        if path.stat().st_size >= SIZE:
            return True
    except FileNotFoundError:
        pass
    except OSError:
        return False
    try:
        if low(state_dir):
            return False
    except OSError:
        return False
    tmp = state_dir / (NAME + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.posix_fallocate(fd, 0, SIZE)  # real blocks, not a sparse file that reserves nothing
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        log.warning("event=disk_reserve_not_made reason=%r", exc.strerror or str(exc))
        return False
    log.info("event=disk_reserve_made bytes=%d path=%s", SIZE, path)
    return True


def low(state_dir: Path) -> bool:
    """Whether less than the reserve's size and HEADROOM is free: no reserve is made, and the
    spool gives back at once what shipping frees (Spool.shrink)."""
    try:
        return shutil.disk_usage(state_dir).free < SIZE + HEADROOM
    except OSError:
        return False


def release_if_low(state_dir: Path) -> bool:
    """At start: give the reserve back when less than its size is free (a disk the spool filled
    before a restart), so that the spool can be opened, written and shipped."""
    try:
        low = shutil.disk_usage(state_dir).free < SIZE
    except OSError:
        return False
    return low and release(state_dir)


def release(state_dir: Path) -> bool:
    """Give the reserve back to the file system; True when there was one to give."""
    try:
        (state_dir / NAME).unlink()
    except FileNotFoundError:
        return False
    except OSError as exc:
        log.error("event=disk_reserve_not_released reason=%r", exc.strerror or str(exc))
        return False
    (state_dir / (NAME + ".tmp")).unlink(missing_ok=True)
    log.warning("event=disk_reserve_released bytes=%d reason='the disk is full: room for the spool to "
                "record what it ships'", SIZE)
    return True
