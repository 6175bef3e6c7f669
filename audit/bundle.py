"""The audit bundle of heartbeat-v1.md §6: file names, deterministic writing and reading back."""

import hashlib
import json
import os
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HEARTBEATS = "heartbeats.jws"
ANCHORS = "anchors.jws"
CHECKPOINT = "checkpoint"
COLLECTOR_PUB = "collector.pub"
AGENTS = "agents.json"
CATALOG = "catalog.json"
USAGE = "usage.json"
INVOICE = "invoice.json"
MANIFEST = "manifest.json"
CLOSED_DIR = "closed"
CLOSED_CHECKPOINT = f"{CLOSED_DIR}/{CHECKPOINT}"
CLOSED_USAGE = f"{CLOSED_DIR}/{USAGE}"
CLOSED_INVOICE = f"{CLOSED_DIR}/{INVOICE}"

# Every bundle holds these; closed/ files only for a closed month.
REQUIRED = (HEARTBEATS, ANCHORS, CHECKPOINT, COLLECTOR_PUB, AGENTS, CATALOG, USAGE, INVOICE)
CLOSED_FILES = (CLOSED_CHECKPOINT, CLOSED_USAGE, CLOSED_INVOICE)
# The only paths §6 lets a bundle hold (manifest.json, which lists the others, aside).
LISTABLE = frozenset((*REQUIRED, *CLOSED_FILES))
AGENT_MEMBERS = ("kid", "public_key", "name", "enrolled_at", "revoked_at")


# The documents a bundle holds are read whole (JSON, a checkpoint, a key): a provider's catalog
# or a month's usage is megabytes. A bigger one is refused unread: it compresses 1000:1 in an
# archive, and parsing it held ~10x its size in memory.
MAX_DOCUMENT = 256 * 1024 * 1024


def read_document(path: Path) -> bytes:
    """A document's bytes; OSError (with the reason) when it is bigger than MAX_DOCUMENT."""
    with path.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > MAX_DOCUMENT:
            raise OSError(f"{path.name} is {size} bytes, more than any document of a bundle "
                          f"({MAX_DOCUMENT} bytes): not read")
        return f.read(MAX_DOCUMENT + 1)


class BundleError(Exception):
    """The directory cannot be written as, or read as, an audit bundle."""


class NotABundle(BundleError):
    """A directory without a regular manifest.json: a failed check (exit 1), not a usage error."""


@dataclass
class ClosedState:
    """What a month close froze: the checkpoint signed at close and the documents over its s lines."""

    checkpoint: str
    usage: dict[str, Any]
    invoice: dict[str, Any]


def dumps_json(obj: Any) -> str:
    """Deterministic JSON: sorted keys, 2-space indent, UTF-8 as is, trailing newline."""
    return json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def jws_lines_text(tokens: Sequence[str]) -> str:
    """One compact JWS per line, each line ending in LF; an empty file for no token."""
    for t in tokens:
        if not t or "\n" in t or "\r" in t:
            raise BundleError("a JWS line must be non-empty and hold no line break")
    return "".join(t + "\n" for t in tokens)


def _write_jws_lines(path: Path, tokens: Iterable[str]) -> str:
    """Write one compact JWS per line (as jws_lines_text) as they come; returns the file's SHA-256."""
    digest = hashlib.sha256()
    with path.open("wb") as out:
        for t in tokens:
            if not t or "\n" in t or "\r" in t:
                raise BundleError("a JWS line must be non-empty and hold no line break")
            data = t.encode("utf-8") + b"\n"
            digest.update(data)
            out.write(data)
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _note_text(note: str) -> str:
    # A signed note always ends with a newline (C2SP signed-note); never add a second one.
    return note if note.endswith("\n") else note + "\n"


def check_target(out_dir: Path, overwrite: bool = False) -> None:
    """``out_dir`` can take a bundle: absent, or an empty directory (or any, with ``overwrite``).
    Also called before the work a bundle takes (export's bill), not only before its writing."""
    if out_dir.exists():
        if not out_dir.is_dir():
            raise BundleError(f"{out_dir} exists and is not a directory")
        if any(out_dir.iterdir()) and not overwrite:
            raise BundleError(f"{out_dir} is not empty; refusing to write a bundle into it")


def write_bundle(
    out_dir: Path,
    *,
    provider: str,
    month: str,
    leaves: Iterable[str],
    anchors: Sequence[str],
    checkpoint: str,
    collector_vkey: str,
    agents: list[dict[str, Any]],
    catalog: Mapping[str, Any],
    usage: Mapping[str, Any],
    invoice: Mapping[str, Any],
    closed: ClosedState | None = None,
    created: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a bundle into ``out_dir`` (created if needed) and return it.

    Refuses a non-empty directory unless ``overwrite``: a bundle is evidence and mixing it with
    stray files would make it fail its own manifest check.
    """
    out_dir = Path(out_dir)
    check_target(out_dir, overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    agent_rows = []
    for a in agents:
        missing = [m for m in AGENT_MEMBERS if m not in a]
        if missing:
            raise BundleError(f"agent entry lacks {missing}")
        agent_rows.append({m: a[m] for m in AGENT_MEMBERS})
    agent_rows.sort(key=lambda a: a["kid"])
    files: dict[str, str] = {
        ANCHORS: jws_lines_text(anchors),
        CHECKPOINT: _note_text(checkpoint),
        COLLECTOR_PUB: collector_vkey.strip() + "\n",
        AGENTS: dumps_json(agent_rows),
        CATALOG: dumps_json(catalog),
        USAGE: dumps_json(usage),
        INVOICE: dumps_json(invoice),
    }
    if closed is not None:
        files[CLOSED_CHECKPOINT] = _note_text(closed.checkpoint)
        files[CLOSED_USAGE] = dumps_json(closed.usage)
        files[CLOSED_INVOICE] = dumps_json(closed.invoice)
    if overwrite:
        # Old closed/ files of a previous export would otherwise linger unlisted.
        for name in CLOSED_FILES:
            if name not in files:
                (out_dir / name).unlink(missing_ok=True)
    # The heartbeats stream to the file: a month of 1.7 million is 16 GB of text, which joined in
    # one string (and encoded once more) took the export's memory.
    digests: dict[str, str] = {HEARTBEATS: _write_jws_lines(out_dir / HEARTBEATS, leaves)}
    for rel, text in files.items():
        path = out_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        data = text.encode("utf-8")
        path.write_bytes(data)
        digests[rel] = hashlib.sha256(data).hexdigest()
    if created is None:
        created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    manifest = {"provider": provider, "month": month, "created": created, "files": digests}
    (out_dir / MANIFEST).write_text(dumps_json(manifest), encoding="utf-8")
    return out_dir


def count_jws_lines(path: Path) -> int:
    """Lines of a .jws file, a final line without LF counted too; read in pieces (a big month's
    file is 16 GB: read whole, `tr7-audit show` needed twice that in memory)."""
    count, last = 0, b"\n"
    with path.open("rb") as f:
        while piece := f.read(1 << 20):
            count += piece.count(b"\n")
            last = piece[-1:]
    return count + (last != b"\n")


def is_regular(root: Path, rel: str) -> bool:
    """Whether ``root/rel`` is a regular file reached through real directories only.

    lstat, so nothing is followed or opened: a symlink's target is no part of the bundle, reading
    a FIFO blocks and /dev/zero never ends."""
    path = root
    try:
        for part in rel.split("/")[:-1]:
            path = path / part
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                return False
        return stat.S_ISREG(os.lstat(root / rel).st_mode)
    except OSError:
        return False


def list_files(root: Path) -> list[str]:
    """Relative POSIX paths of every entry below ``root`` but real directories (symlinks not followed)."""
    out = []
    for p in sorted(root.rglob("*")):
        if p.is_dir() and not p.is_symlink():
            continue
        out.append(p.relative_to(root).as_posix())
    return out

