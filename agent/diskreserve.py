"""A reserve file in the state directory, given up when the disk fills so that the spool can still ship.

Why: SQLite needs room to delete rows (the WAL takes the changed pages first) and to open a spool
(its 32 KiB -shm file), so a spool that filled its disk could neither record what it had shipped
nor be opened again, and the agent could never empty it (a review: every start refused, and the
space an operator freed was eaten by failed writes). The reserve is that room, set aside while
there is plenty. At the first `disk full` all of it but START_SIZE is given back, for the shipper
to record its shipments and hand the freed pages back; a start on a low disk gives back the rest.
Nothing is signed while the reserve is not whole (Service.poll_job): the room is the shipper's.
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
START_SIZE = 256 << 10  # bytes kept at the first `disk full`: a start's -shm file and first writes
HEADROOM = 1 << 20  # bytes left free beside a reserve made: the spool's next heartbeats
NEARLY_FULL = 64 << 10  # free bytes under which SQLite's I/O errors are read as a full disk
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_CHUNK = 1 << 20
_unsupported_said = False


def is_full(exc: BaseException, where: Path | None = None) -> bool:
    """Whether ``exc``, or what it was raised from, says the disk is full: ENOSPC or EDQUOT, or
    SQLite's SQLITE_FULL; with ``where``, also SQLite's I/O errors while the file system of
    ``where`` is (nearly) full: SQLite reads only ENOSPC as full, and a -shm file it cannot grow
    (opening a spool on a full disk) as SQLITE_IOERR_SHMSIZE."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _FULL_ERRNOS:
            return True
        if isinstance(e, sqlite3.Error):
            code = getattr(e, "sqlite_errorcode", None)
            if code == sqlite3.SQLITE_FULL:
                return True
            if code is not None and code & 0xFF == sqlite3.SQLITE_IOERR and where is not None:
                try:
                    return shutil.disk_usage(where).free < NEARLY_FULL
                except OSError:
                    return False
        e = e.__cause__ or e.__context__
    return False


def low(state_dir: Path) -> bool:
    """Whether less than the reserve's size and HEADROOM is free: no reserve is made, and the
    spool gives back at once what shipping frees (Spool.shrink)."""
    try:
        return shutil.disk_usage(state_dir).free < SIZE + HEADROOM
    except OSError:
        return False


def ensure(state_dir: Path) -> bool | None:
    """The reserve whole, made if need be: True when it is; False when the disk lacks room for it
    and HEADROOM beside (signing waits); None when it cannot be made for another reason (said once:
    the agent then signs without one, as before there was a reserve)."""
    global _unsupported_said
    path, tmp = state_dir / NAME, state_dir / (NAME + ".tmp")
    try:
        if path.stat().st_size >= SIZE:
            return True
    except FileNotFoundError:
        pass
    except OSError:
        return None
    tmp.unlink(missing_ok=True)  # one a kill left half made
    if low(state_dir):
        return False
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            # Data, not fallocate or zeros: a file system that compresses (btrfs, ZFS) stores
            # zeros in nothing, and some have no fallocate. Once per reserve made: ~10 ms.
            left = SIZE
            while left > 0:
                left -= os.write(fd, os.urandom(min(_CHUNK, left)))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno in _FULL_ERRNOS:
            return False
        if not _unsupported_said:
            _unsupported_said = True
            log.warning("event=disk_reserve_not_made reason=%r action='signing without a reserve'",
                        exc.strerror or str(exc))
        return None
    log.info("event=disk_reserve_made bytes=%d path=%s", SIZE, path)
    return True


def release(state_dir: Path, keep: int | None = None) -> bool:
    """Give the reserve back to the file system but for ``keep`` bytes (default START_SIZE: a later
    start's room); True when it gave any."""
    keep = START_SIZE if keep is None else keep
    path = state_dir / NAME
    (state_dir / (NAME + ".tmp")).unlink(missing_ok=True)
    try:
        size = path.stat().st_size
        if size <= keep:
            return False
        if keep:
            os.truncate(path, keep)
        else:
            path.unlink()
    except FileNotFoundError:
        return False
    except OSError as exc:
        log.error("event=disk_reserve_not_released reason=%r", exc.strerror or str(exc))
        return False
    log.warning("event=disk_reserve_released bytes=%d reason='the disk is full: room for the spool to "
                "record what it ships'", size - keep)
    return True


def release_if_low(state_dir: Path) -> bool:
    """At start: give all of the reserve back when less than START_SIZE is free (a disk filled
    before a restart), so that the spool can be opened (its -shm file), written and shipped. Not
    more often: a reserve given back at every start on a disk with a few MiB free was made again."""
    try:
        is_low = shutil.disk_usage(state_dir).free < START_SIZE
    except OSError:
        return False
    return is_low and release(state_dir, keep=0)
