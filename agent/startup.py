"""What `run` checks before it starts, shared with the commands: the state directory, the key, the slot."""

import contextlib
import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path

from agent import diskreserve
from agent.config import Config
from protocol.errors import ProtocolError
from protocol.keys import AgentKey, load_private_key, remove_stale_temps
from protocol.timefmt import parse_rfc3339

log = logging.getLogger("tr7.agent")


class StartupError(Exception):
    """The service cannot start (no key, unusable state dir or spool): exit 1."""


def check_state_dir(state_dir: Path) -> None:
    """Fail now, loudly, rather than run 'healthy but idle' on a directory we cannot write."""
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        probe = state_dir / ".write-probe"
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"probe")
            os.fsync(fd)
        finally:
            os.close(fd)
            probe.unlink(missing_ok=True)  # also when the write failed (a full disk): leave nothing
        _remove_stale_temps(state_dir)
    except (FileExistsError, NotADirectoryError) as exc:
        raise StartupError(f"state directory {state_dir} is not a directory (a file is in its way)") from exc
    except OSError as exc:
        if diskreserve.is_full(exc):
            # A full disk is no unwritable directory: refused, the agent could never ship the spool
            # that filled it (a review). Its reserve is given back, and the service ships.
            diskreserve.release(state_dir)
            _remove_stale_temps(state_dir)  # room too: a key's temporary file is a few hundred bytes
            log.warning("event=disk_full at=start state_dir=%s", state_dir)
            return
        raise StartupError(f"state directory {state_dir} is not writable: {exc.strerror or exc}") from exc


# Written whole through a temporary file of their writer's own (protocol.keys.replace_file): one
# killed before its rename leaves that file, which nothing else removes. signed-heads' own are
# removed by signedkeys.check.
_WHOLE_FILES = ("agent.key", "enrollment.json")


def _remove_stale_temps(state_dir: Path) -> None:
    for name in _WHOLE_FILES:
        with contextlib.suppress(OSError):
            if removed := remove_stale_temps(state_dir / name):
                log.info("event=stale_temps_removed file=%s count=%d", name, removed)


def load_key(config: Config) -> AgentKey:
    path = config.agent.key_path
    if not path.exists():
        raise StartupError(f"no agent key at {path}: run `tr7-agent enroll --config {config.path} "
                           "--token TOKEN` first")
    try:
        return load_private_key(path)
    except PermissionError as exc:  # enrolled as root by an older agent, say: the file is root's
        raise StartupError(f"cannot load the agent key {path}: {exc}; it must be readable by the user the "
                           f"agent runs as (uid {os.geteuid()}): chown it to that user, as `tr7-agent "
                           "enroll` run as root now does") from exc
    except (ProtocolError, OSError, ValueError) as exc:
        raise StartupError(f"cannot load the agent key {path}: {exc}") from exc


def aligned_start(interval: int, now: float) -> datetime:
    """The next multiple of ``interval`` seconds since the epoch."""
    return datetime.fromtimestamp((int(now) // interval + 1) * interval, UTC)


def enrolled_at(path: Path, kid: str) -> int | None:
    """The collector's enrolment instant of ``kid`` from enrollment.json (`tr7-agent enroll`), or
    None: no file, another key's, or a time that does not read (the collector then judges alone)."""
    try:
        record = json.loads(path.read_text())
        if not isinstance(record, dict) or record.get("kid") != kid:
            return None
        # whole seconds inside the window: a fraction starts it at the next second (as tr7-audit)
        return parse_rfc3339(record.get("enrolled_at"), "enrolled_at", round_up=True)
    except (OSError, ValueError, ProtocolError):
        return None
