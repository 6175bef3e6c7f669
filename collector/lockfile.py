"""Lock files in the data directory: opened read-only for flock by any of its users, never through a link."""

import os
import stat
from pathlib import Path


def open_lock(path: Path | str, owner: tuple[int, int] | None = None) -> int:
    """The descriptor of the lock file at ``path``, made 0644 if missing. Read-only is enough for
    flock, so the service's user and an operator's command share it whoever made it. Never opened
    through a symbolic link, nor anything but a regular file: the service's user may write the data
    directory, and a link it planted there was followed by root's command, which then gave the
    link's target (/etc/shadow) to that user (a review). ``owner`` (uid, gid): given to it through
    the descriptor when root runs this, so that root leaves no lock the service cannot open."""
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"{path} is not a regular file: not used as a lock")
        if owner is not None and os.geteuid() == 0 and (st.st_uid, st.st_gid) != owner:
            os.fchown(fd, *owner)
    except BaseException:
        os.close(fd)
        raise
    return fd
