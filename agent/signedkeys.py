"""Which keys have signed in this state directory: a chain lost with spool.db must not restart at 1.

The spool holds each key's chain head. Lose spool.db and keep agent.key (deleted as "corrupt", a
partial restore) and a new spool would sign seq 1, 2, ... again under the same key: a fork
(heartbeat-v1.md §3.3), whose every copy the collector quarantines. This file, beside the key,
lists every kid that has signed; the service refuses to start a key listed here whose chain the
spool does not hold. Written once per key (at its first heartbeat, or the first start that finds
its chain), fsynced, so it costs nothing per poll.
"""

import os
from pathlib import Path

NAME = "signed-keys"


def listed(state_dir: Path) -> set[str]:
    try:
        return set((state_dir / NAME).read_text(encoding="ascii").split())
    except FileNotFoundError:
        return set()


def add(state_dir: Path, kid: str) -> None:
    """List ``kid`` (durably) unless it already is."""
    if kid in listed(state_dir):
        return
    fd = os.open(state_dir / NAME, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{kid}\n".encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)


class LostChain(Exception):
    """The spool does not hold the chain of a key that has signed here."""


def check(state_dir: Path, kid: str, head_seq: int, spool_path: Path) -> None:
    """At start: list a key whose chain the spool holds (one from before this file existed);
    refuse a listed key whose chain it does not (raises LostChain)."""
    if head_seq > 0:
        add(state_dir, kid)
    elif kid in listed(state_dir):
        raise LostChain(
            f"{spool_path} holds no chain for key {kid}, which has signed heartbeats before "
            f"({state_dir / NAME}): a new chain would sign seq 1 again, a fork the collector "
            "quarantines (heartbeat-v1.md §3.3). Restore spool.db, or move agent.key aside and enrol "
            "a new key (docs/agent.md, \"Rotating the agent key\")")
