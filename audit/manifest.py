"""The bundle's files against heartbeat-v1.md §6 and manifest.json: which files verify may read."""

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from audit import bundle as B
from protocol.errors import ProtocolError
from protocol.strictjson import loads_strict
from protocol.timefmt import month_bounds, parse_rfc3339, previous_month

Add = Callable[..., None]


@dataclass
class Manifest:
    provider: str = ""
    month: str = ""
    # The §6 files that are regular files on disk: the only paths any later check may open.
    present: set[str] = field(default_factory=set)


def _load(add: Add, root: Path) -> Any:
    """manifest.json's JSON, or None (reported) when there is none to read: absent means no bundle,
    and a symlink or FIFO is not read. A manifest that does not parse is {} (also reported): the
    files are still checked against §6."""
    path = root / B.MANIFEST
    if not path.exists() and not path.is_symlink():
        add(B.MANIFEST, None, "bundle.missing", f"{root} holds no {B.MANIFEST}: not an audit bundle")
        return None
    if not B.is_regular(root, B.MANIFEST):
        add(B.MANIFEST, None, "manifest.format", "not a regular file (symlink, directory, FIFO or device); "
            "not read")
        return None
    try:
        value = loads_strict(B.read_document(path), "json.format")  # duplicate names refused
        # Any JSON but an object (null above all, which reads as None) is a manifest with no
        # files map, reported by check_manifest: None would mean "no manifest" and end the checks.
        return value if isinstance(value, dict) else {}
    except OSError as exc:
        add(B.MANIFEST, None, "file.unreadable", str(exc))
        return None
    except ProtocolError as exc:
        add(B.MANIFEST, None, "json.format", f"not valid UTF-8 JSON: {exc.detail}")
        return {}


def _fields(add: Add, manifest: dict[str, Any], out: Manifest) -> None:
    for name in ("provider", "month", "created"):
        if not isinstance(manifest.get(name), str):
            add(B.MANIFEST, None, "manifest.format", f"manifest.json lacks the string {name}")
    out.provider = manifest.get("provider") or ""
    out.month = manifest.get("month") or ""
    try:
        month_bounds(out.month)
        # the anchors are of the month before (§6): 0001-01 has none, and ended in verify.internal
        month_bounds(previous_month(out.month))
    except ValueError:
        add(B.MANIFEST, None, "manifest.format",
            f"month {out.month!r} is not YYYY-MM from 0001-02 to 9999-11")
        out.month = ""
    try:
        parse_rfc3339(manifest.get("created"), "manifest.format")  # §6 fixes no form: any RFC 3339
    except ValueError:
        add(B.MANIFEST, None, "manifest.format", "created is not an RFC 3339 date-time")


def check_manifest(add: Add, root: Path) -> Manifest | None:
    """Report every file §6 does not name, every non-regular file, and the manifest's own checks.

    None when there is no manifest.json to go by: nothing else can be checked then."""
    manifest = _load(add, root)
    if manifest is None:
        return None
    on_disk = {rel for rel in B.list_files(root) if rel != B.MANIFEST}
    irregular = {rel for rel in on_disk if not B.is_regular(root, rel)}
    out = Manifest(present={rel for rel in on_disk & B.LISTABLE if rel not in irregular})
    files = manifest.get("files") if isinstance(manifest, dict) else None
    listed: dict[str, Any] | None = files if isinstance(files, dict) else None
    if listed is not None:
        _fields(add, manifest, out)
    else:
        add(B.MANIFEST, None, "manifest.format", "manifest.json must be an object with a files map")
    # §6 names the bundle's files exactly: anything else, listed or not, is no part of the evidence.
    for rel in sorted((on_disk | set(listed or {})) - B.LISTABLE):
        add(rel, None, "bundle.extra", "not a file of heartbeat-v1.md §6")
    for rel in sorted(on_disk & B.LISTABLE & irregular):
        add(rel, None, "manifest.format", "not a regular file (symlink, directory, FIFO or device); not read")
    if listed is not None:
        _compare(add, root, on_disk, listed, out)
    return out


def _compare(add: Add, root: Path, on_disk: set[str], listed: dict[str, Any], out: Manifest) -> None:
    """The listed files against the disk: unlisted, missing, other SHA-256, §6 files absent."""
    for rel in sorted(on_disk - set(listed)):
        add(rel, None, "manifest.unlisted", "file is in the bundle but not in manifest.json")
    for rel, digest in sorted(listed.items()):
        if rel not in B.LISTABLE or (rel in on_disk and rel not in out.present):
            continue  # reported above; never hashed, never followed
        if rel not in on_disk:
            add(rel, None, "manifest.missing", "listed in manifest.json but absent")
            continue
        try:
            # "the SHA-256 (hex)" (§6): either case of hex digit (the spec says "lowercase" where it means it)
            same = isinstance(digest, str) and B.sha256_file(root / rel) == digest.lower()
        except OSError as exc:
            add(rel, None, "file.unreadable", str(exc))
            out.present.discard(rel)
            continue
        if not same:
            add(rel, None, "manifest.hash", "SHA-256 differs from manifest.json")
    for rel in B.REQUIRED:
        if rel not in on_disk and rel not in listed:
            add(rel, None, "bundle.missing", "required file of heartbeat-v1.md §6 is absent")
    if any(rel in on_disk for rel in B.CLOSED_FILES):
        for rel in B.CLOSED_FILES:
            if rel not in on_disk and rel not in listed:
                add(rel, None, "bundle.missing", "closed/ must hold checkpoint, usage.json, invoice.json")
