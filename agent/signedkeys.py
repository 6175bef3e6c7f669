"""Which keys have signed in this state directory, and how far: a lost or older spool must not re-sign.

The spool holds each key's chain head. Lose spool.db and keep agent.key (deleted as "corrupt", a
partial restore) and a new spool would sign seq 1, 2, ... again under the same key; restore an
older copy of it (last night's backup) and it would sign again the seqs signed since. Either is
a fork (heartbeat-v1.md §3.3), whose every copy the collector quarantines. Two files beside the
key say what the spool must hold:
- `signed-keys` lists every kid that has signed here, written once per key (at its first
  heartbeat, or the first start that finds its chain);
- `signed-heads` gets a line `<kid> <seq>` after each heartbeat is committed (one append and one
  fsync a poll), rewritten with only the highest seq of each key once it grows past
  COMPACT_BYTES. A line cut short by a crash is a prefix of the true one: its number is no higher.
The service refuses to start a key whose chain the spool does not hold, or holds only up to a
lower seq than `signed-heads` says was signed.
"""

import logging
import os
import re
from pathlib import Path

from protocol.keys import remove_stale_temps, replace_file, sync_dir

log = logging.getLogger("tr7.agent")

NAME = "signed-keys"
HEADS = "signed-heads"
COMPACT_BYTES = 64 << 10
_LINE = re.compile(r"([0-9a-f]{32}) ([0-9]{1,19})\Z")


def listed(state_dir: Path) -> set[str]:
    try:
        return set((state_dir / NAME).read_text(encoding="ascii").split())
    except FileNotFoundError:
        return set()


def _append_line(path: Path, line: str) -> None:
    created = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:  # the new file's name, too, survives a power cut (a lost record reads as no record)
        sync_dir(path.parent)


def add(state_dir: Path, kid: str) -> None:
    """List ``kid`` (durably) unless it already is."""
    if kid not in listed(state_dir):
        _append_line(state_dir / NAME, f"{kid}\n")


def heads(state_dir: Path) -> dict[str, int]:
    """The highest seq recorded as signed, by kid."""
    try:
        text = (state_dir / HEADS).read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        return {}
    out: dict[str, int] = {}
    for line in text.splitlines():
        m = _LINE.match(line)
        if m:
            out[m.group(1)] = max(out.get(m.group(1), 0), int(m.group(2)))
    return out


def signed(state_dir: Path, kid: str, seq: int) -> None:
    """Record that ``kid`` signed (and committed) ``seq``; compact the file once it is long."""
    path = state_dir / HEADS
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        size = 0
    cut = False
    if size:
        with path.open("rb") as f:
            f.seek(size - 1)
            cut = f.read(1) != b"\n"
    # after a line cut by a crash, a line of its own: joined to it, both were unreadable
    _append_line(path, f"{chr(10) if cut else ''}{kid} {seq}\n")
    if size + 60 > COMPACT_BYTES:
        try:
            _compact(state_dir, path)
        except OSError as exc:  # the line is recorded; a long file only costs reading it
            log.warning("event=signed_heads_not_compacted path=%s reason=%r", path, str(exc))


def _compact(state_dir: Path, path: Path) -> None:
    text = "".join(f"{k} {s}\n" for k, s in sorted(heads(state_dir).items()))
    # whole, synced, 0600, through a name of its own; the rename synced before the next append
    replace_file(text.encode("ascii"), path)


class LostChain(Exception):
    """The spool does not hold the chain of a key that has signed here, or holds less of it."""


_ADVICE = ("Move agent.key aside and enrol a new key (docs/agent.md, \"Rotating the agent key\"); a "
           "copy of spool.db is usable only if nothing was signed after it was taken, which the agent "
           "checks")


def behind(state_dir: Path, kid: str, head_seq: int, spool_path: Path) -> str | None:
    """Why a spool whose head for ``kid`` is ``head_seq`` (> 0) is an older copy, or None; reads only."""
    done = heads(state_dir).get(kid, 0)
    if not 0 < head_seq < done:
        return None
    return (f"{spool_path} holds the chain of key {kid} up to seq {head_seq}, but seq {done} was signed "
            f"here ({state_dir / HEADS}): it is an older copy, and signing on would sign seqs {head_seq + 1} "
            f"to {done} again, forks the collector quarantines (heartbeat-v1.md §3.3). {_ADVICE}")


def check(state_dir: Path, kid: str, head_seq: int, spool_path: Path) -> None:
    """At start: list a key whose chain the spool holds (one from before these files existed) and
    record its head; refuse a listed key whose chain the spool does not hold, or one whose head is
    below a seq already signed here (raises LostChain)."""
    # a compaction cut short by a SIGKILL left its temporary file; nothing else would remove it
    remove_stale_temps(state_dir / HEADS)
    older = behind(state_dir, kid, head_seq, spool_path)
    if older is not None:
        raise LostChain(older)
    done = heads(state_dir).get(kid, 0)
    if head_seq > 0:
        add(state_dir, kid)
        if done < head_seq:
            signed(state_dir, kid, head_seq)
    elif kid in listed(state_dir) or done:
        raise LostChain(
            f"{spool_path} holds no chain for key {kid}, which has signed heartbeats before "
            f"({state_dir / NAME}): a new chain would sign seq 1 again, a fork the collector "
            f"quarantines (heartbeat-v1.md §3.3). {_ADVICE}")
