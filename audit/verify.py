"""Offline verification of an audit bundle: every check of heartbeat-v1.md §6, as findings."""

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from audit import bundle as B
from audit import checks
from audit.checks import Finding, Report
from protocol.heartbeat import Heartbeat
from protocol.merkle import leaf_hash, root_hash
from protocol.note import Checkpoint, NoteError, NoteVerifier, verify_checkpoint
from protocol.timefmt import month_bounds, parse_time

Progress = Callable[[str, int, int], None]
# Above this many lines, keep only light heartbeats in memory (a full one costs about 2 KB).
LIGHT_ABOVE = 100_000

__all__ = ["Finding", "Report", "verify_bundle"]


@dataclass
class _Ctx:
    root: Path
    report: Report
    progress: Progress | None
    workers: int | None
    provider: str = ""
    month: str = ""
    present: set[str] = field(default_factory=set)

    def add(self, file: str, line: int | None, rule: str, message: str, severity: str = "error") -> None:
        self.report.findings.append(Finding(file, line, rule, message, severity))

    def has(self, rel: str) -> bool:
        return rel in self.present


def _load_json(ctx: _Ctx, rel: str) -> Any:
    if not ctx.has(rel):
        return None
    try:
        return json.loads((ctx.root / rel).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        ctx.add(rel, None, "json.format", f"not valid UTF-8 JSON: {exc}")
        return None


def _check_manifest(ctx: _Ctx) -> None:
    on_disk = [rel for rel in B.list_files(ctx.root) if rel != B.MANIFEST]
    ctx.present = {*on_disk, B.MANIFEST}
    manifest = _load_json(ctx, B.MANIFEST)
    ctx.present.discard(B.MANIFEST)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        ctx.add(B.MANIFEST, None, "manifest.format", "manifest.json must be an object with a files map")
        return
    for name in ("provider", "month", "created"):
        if not isinstance(manifest.get(name), str):
            ctx.add(B.MANIFEST, None, "manifest.format", f"manifest.json lacks the string {name}")
    ctx.provider = manifest.get("provider") or ""
    ctx.month = manifest.get("month") or ""
    try:
        month_bounds(ctx.month)
    except ValueError:
        ctx.add(B.MANIFEST, None, "manifest.format", f"month {ctx.month!r} is not YYYY-MM")
        ctx.month = ""
    try:
        parse_time(manifest.get("created"), "manifest.format")
    except ValueError:
        ctx.add(B.MANIFEST, None, "manifest.format", "created is not a UTC time YYYY-MM-DDTHH:MM:SSZ")
    listed: dict[str, Any] = manifest["files"]
    for rel in on_disk:
        if rel not in listed:
            ctx.add(rel, None, "manifest.unlisted", "file is in the bundle but not in manifest.json")
    for rel, digest in sorted(listed.items()):
        if rel not in ctx.present:
            ctx.add(rel, None, "manifest.missing", "listed in manifest.json but absent")
        elif (ctx.root / rel).is_symlink() or not (ctx.root / rel).is_file():
            ctx.add(rel, None, "manifest.format", "not a regular file")
        elif B.sha256_file(ctx.root / rel) != digest:
            ctx.add(rel, None, "manifest.hash", "SHA-256 differs from manifest.json")
    for rel in B.REQUIRED:
        if rel not in ctx.present and rel not in listed:
            ctx.add(rel, None, "bundle.missing", "required file of heartbeat-v1.md §6 is absent")
    closed = [rel for rel in B.CLOSED_FILES if rel in ctx.present]
    if closed:
        for rel in B.CLOSED_FILES:
            if rel not in ctx.present and rel not in listed:
                ctx.add(rel, None, "bundle.missing", "closed/ must hold checkpoint, usage.json, invoice.json")


def _read_lines(ctx: _Ctx, rel: str) -> tuple[list[str], list[bytes]]:
    """A .jws file's lines (as text, for verification) and their RFC 9162 leaf hashes (of the bytes)."""
    lines: list[str] = []
    hashes: list[bytes] = []
    if not ctx.has(rel):
        return lines, hashes
    with (ctx.root / rel).open("rb") as f:  # streamed: a month's log can be hundreds of MB
        for raw in f:
            if raw.endswith(b"\n"):
                raw = raw[:-1]
            else:
                ctx.add(rel, len(lines) + 1, "jws.format", "the last line lacks its LF")
            hashes.append(leaf_hash(raw))
            # Non-ASCII bytes become U+FFFD, which JWS verification then rejects on its line.
            lines.append(raw.decode("ascii", "replace"))
    return lines, hashes


def _checkpoint(ctx: _Ctx, rel: str, verifier: NoteVerifier | None, rule: str) -> Checkpoint | None:
    if verifier is None or not ctx.has(rel):
        return None
    try:
        cp = verify_checkpoint((ctx.root / rel).read_bytes(), verifier)
    except NoteError as exc:
        ctx.add(rel, None, f"{rule}.signature", f"does not verify against collector.pub: {exc}")
        return None
    want = f"/{ctx.provider}/{ctx.month}"
    if not cp.origin.endswith(want):
        ctx.add(rel, None, f"{rule}.origin", f"origin {cp.origin!r} is not <collector>{want}")
    return cp


def _collector(ctx: _Ctx, pinned: str | None) -> NoteVerifier | None:
    if not ctx.has(B.COLLECTOR_PUB):
        return None
    try:
        verifier = NoteVerifier.from_vkey((ctx.root / B.COLLECTOR_PUB).read_text(encoding="utf-8").strip())
    except (NoteError, UnicodeDecodeError) as exc:
        ctx.add(B.COLLECTOR_PUB, 1, "collector.key", f"not a note verifier key: {exc}")
        return None
    if pinned is not None and verifier.vkey() != pinned.strip():
        # Whoever can rewrite the bundle can replace collector.pub too; only a key known out of
        # band proves the checkpoints are the collector's.
        ctx.add(B.COLLECTOR_PUB, 1, "collector.pinned", f"{verifier.vkey()} is not the expected {pinned}")
    return verifier


def _check_log(ctx: _Ctx, cp: Checkpoint | None, hashes: list[bytes]) -> None:
    if cp is None:
        return
    if cp.size != len(hashes):
        ctx.add(B.HEARTBEATS, None, "log.size",
                f"{len(hashes)} lines but the checkpoint commits to {cp.size} leaves")
    if root_hash(hashes) != cp.root:
        ctx.add(B.HEARTBEATS, None, "log.root",
                "Merkle root of the lines differs from the checkpoint's root")


def _check_closed(ctx: _Ctx, verifier: NoteVerifier | None, cp: Checkpoint | None,
                  hashes: list[bytes], tokens: list[tuple[int, Any]], anchors: list[Heartbeat],
                  catalog: Any) -> None:
    closed = _checkpoint(ctx, B.CLOSED_CHECKPOINT, verifier, "closed")
    if closed is None:
        return
    if cp is not None and closed.origin != cp.origin:
        ctx.add(B.CLOSED_CHECKPOINT, None, "closed.origin", "origin differs from the current checkpoint's")
    s = closed.size
    if s > len(hashes):
        ctx.add(B.CLOSED_CHECKPOINT, None, "closed.size", f"size {s} exceeds the {len(hashes)} lines")
        return
    if root_hash(hashes[:s]) != closed.root:
        ctx.add(B.CLOSED_CHECKPOINT, None, "closed.root",
                f"root is not the Merkle root of the first {s} lines: the log was rewritten after close")
        return
    beats = [t for i, t in tokens if i < s]
    _stage(ctx.progress, "recomputing closed/ billing", len(beats), lambda: checks.compare_billing(
        ctx.add, ctx.root, beats, anchors, catalog, ctx.month,
        B.CLOSED_USAGE, B.CLOSED_INVOICE, "closed", ctx.present))


def _stage(progress: Progress | None, stage: str, total: int, fn: Callable[[], None]) -> None:
    if progress is not None:
        progress(stage, 0, total)
    fn()
    if progress is not None:
        progress(stage, total, total)


def verify_bundle(path: Path | str, progress: Progress | None = None, workers: int | None = None,
                  collector_key: str | None = None) -> Report:
    """Verify a bundle directory; raise BundleError when it is not a bundle at all.

    ``collector_key``: the collector's verifier key as published out of band; when given,
    collector.pub must be exactly it.
    """
    root = Path(path)
    if not root.is_dir():
        raise B.BundleError(f"{root} is not a directory")
    if not (root / B.MANIFEST).is_file():
        raise B.BundleError(f"{root} holds no {B.MANIFEST}: not an audit bundle")
    ctx = _Ctx(root, Report(str(root)), progress, workers)
    _check_manifest(ctx)
    ctx.report.provider, ctx.report.month = ctx.provider, ctx.month
    agents = checks.load_agents(ctx.add, _load_json(ctx, B.AGENTS))
    verifier = _collector(ctx, collector_key)
    cp = _checkpoint(ctx, B.CHECKPOINT, verifier, "checkpoint")
    lines, hashes = _read_lines(ctx, B.HEARTBEATS)
    ctx.report.lines = len(lines)
    if cp is not None:
        ctx.report.checkpoint = {"origin": cp.origin, "size": cp.size, "root": cp.root.hex()}
    _check_log(ctx, cp, hashes)
    light = len(lines) > LIGHT_ABOVE
    good = checks.verify_lines(ctx.add, B.HEARTBEATS, lines, agents, ctx.month, progress,
                               workers if workers is not None else _default_workers(len(lines)), light=light)
    anchor_lines, _ = _read_lines(ctx, B.ANCHORS)
    anchors = list(checks.verify_lines(ctx.add, B.ANCHORS, anchor_lines, agents, ctx.month, None, 1,
                                       anchors=True).values())
    ctx.report.chains = checks.check_chains(ctx.add, good, anchors, agents)
    catalog = _load_json(ctx, B.CATALOG)
    cat_provider = catalog.get("provider") if isinstance(catalog, dict) else None
    if isinstance(cat_provider, dict) and cat_provider.get("id") != ctx.provider:
        ctx.add(B.CATALOG, None, "catalog.provider",
                f"provider id {cat_provider.get('id')!r} is not the bundle's {ctx.provider!r}")
    # Billing gets the verified heartbeats, or for big logs their lines (parsed again, in parallel).
    tokens: list[tuple[int, Any]] = [(i, lines[i] if light else good[i]) for i in sorted(good)]
    del lines, good
    if ctx.month:
        _stage(progress, "recomputing billing", len(tokens), lambda: checks.compare_billing(
            ctx.add, root, [t for _, t in tokens], anchors, catalog, ctx.month,
            B.USAGE, B.INVOICE, "billing", ctx.present))
        _check_closed(ctx, verifier, cp, hashes, tokens, anchors, catalog)
    return ctx.report


def _default_workers(n: int) -> int:
    # Process start-up and pickling only pay off for big logs; use every core the host offers.
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return 1 if n < 20_000 else max(1, min(cores, 8))
