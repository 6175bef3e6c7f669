"""Lock files in the data directory are never opened through a link, nor anything but a file."""

import os
import threading
from pathlib import Path

import pytest

from collector import highwater
from collector.lockfile import open_lock


def test_a_planted_link_or_fifo_is_refused_and_its_target_left_alone(tmp_path: Path) -> None:
    """The service's user may write the data directory: a `highwater.lock` it made a link to
    /etc/shadow was followed by root's next command, which gave the target to that user. Found by
    a review."""
    target = tmp_path / "target"
    target.write_text("secret")
    before = target.stat()
    link = tmp_path / "highwater.lock"
    link.symlink_to(target)
    with pytest.raises(OSError):
        open_lock(link, (65534, 65534))
    fifo = tmp_path / "collector.db.write.lock"
    os.mkfifo(fifo)
    done = threading.Event()

    def try_fifo() -> None:
        with pytest.raises(OSError, match="not a regular file"):
            open_lock(fifo)
        done.set()

    threading.Thread(target=try_fifo, daemon=True).start()
    assert done.wait(10), "opening a FIFO as a lock blocked"
    after = target.stat()
    assert (after.st_uid, after.st_gid, after.st_mode) == (before.st_uid, before.st_gid, before.st_mode)
    # the marks' writer goes through it: refused (logged by its caller), the target untouched
    mark = highwater._Mark(tmp_path, "db1")
    with pytest.raises(OSError):
        mark.write({"acme/2026-11": 3}, replace=False)
    assert target.read_text() == "secret" and target.stat().st_uid == before.st_uid


def test_a_lock_root_makes_is_given_to_the_owner_through_its_descriptor(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    fd = open_lock(path, (65534, 65534))
    try:
        st = os.fstat(fd)
        assert st.st_mode & 0o777 == 0o644
        if os.geteuid() == 0:  # only root can give a file away
            assert (st.st_uid, st.st_gid) == (65534, 65534)
        else:
            assert st.st_uid == os.geteuid()
    finally:
        os.close(fd)
    os.close(open_lock(path))  # opened again as it is


def test_an_unreadable_or_damaged_mark_is_not_overwritten_by_the_writer(tmp_path: Path) -> None:
    """The service rewrote a marks file it could not read with only what it knew: another database's
    marks were gone and a restore under the running service was hidden before the next start."""
    marks = tmp_path / highwater.FILE
    marks.write_text("{damaged")
    with pytest.raises(highwater.Unreadable):
        highwater._Mark(tmp_path, "db1").write({"acme/2026-11": 3}, replace=False)
    assert marks.read_text() == "{damaged"
    highwater._Mark(tmp_path, "db1").write({"acme/2026-11": 3}, replace=True)  # accept-restore only
    assert '"acme/2026-11": 3' in marks.read_text()
