"""Offline verification of an audit bundle: every check of heartbeat-v1.md §6, as findings."""

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from audit import bundle as B
from audit import checks
from audit.archive import ArchiveError, is_archive, opened
from audit.checks import Finding, Report
from audit.lines import Lines, read_line, verify_lines
from audit.manifest import check_manifest
from audit.recompute import Decl, Tally, cells_of, tally_activity, tally_heartbeat
from billing import Activity, load_catalog
from billing.recompute import Hours
from protocol.chain import ChainAnalysis, analyze, anchor_map
from protocol.errors import ProtocolError
from protocol.heartbeat import Heartbeat, parse_unverified
from protocol.note import Checkpoint, NoteError, NoteVerifier, verify_checkpoint
from protocol.strictjson import loads_strict
from protocol.timefmt import month_bounds

Progress = Callable[[str, int, int], None]

__all__ = ["Finding", "Report", "verify_bundle"]


@dataclass
class _Ctx:
    root: Path
    report: Report
    progress: Progress | None
    workers: int | None
    provider: str = ""
    month: str = ""
    origin: str | None = None  # the collector origin the auditor was given (--origin), if any
    present: set[str] = field(default_factory=set)
    cache: dict[str, bytes | None] = field(default_factory=dict)

    def add(self, file: str, line: int | None, rule: str, message: str, severity: str = "error") -> None:
        self.report.findings.append(Finding(file, line, rule, message, severity))

    def has(self, rel: str) -> bool:
        return rel in self.present

    def read(self, rel: str) -> bytes | None:
        """A small file's bytes, read once; None when absent, not a regular file (see audit.manifest)
        or unreadable (reported)."""
        if not self.has(rel):
            return None
        if rel not in self.cache:
            try:
                self.cache[rel] = B.read_document(self.root / rel)
            except OSError as exc:
                self.add(rel, None, "file.unreadable", str(exc))
                self.cache[rel] = None
        return self.cache[rel]


_JSON_TYPES = {type(None): "null", bool: "a boolean", str: "a string", list: "an array", dict: "an object"}


def _load_json(ctx: _Ctx, rel: str, kind: type, rule: str) -> Any:
    """The file's JSON when it is a ``kind`` (dict or list); otherwise None, always reported.

    None is what callers take as "nothing to check, already reported": a file holding the JSON
    null, or any other type, must not read as None unreported (a catalog of null once left the
    invoice unchecked)."""
    data = ctx.read(rel)
    if data is None:
        return None
    try:
        # Strict (duplicate member names refused): with the last of two names winning, a bundle
        # could say one thing to this verifier and another to a parser that keeps the first.
        value = loads_strict(data, "json.format")
    except ProtocolError as exc:
        ctx.add(rel, None, "json.format", f"not valid UTF-8 JSON: {exc.detail}")
        return None
    if not isinstance(value, kind):
        ctx.add(rel, None, rule, f"must be a JSON {'object' if kind is dict else 'array'}, "
                f"not {_JSON_TYPES.get(type(value), 'a number')}")
        return None
    return value


def _checkpoint(ctx: _Ctx, rel: str, verifier: NoteVerifier | None, rule: str) -> Checkpoint | None:
    data = None if verifier is None else ctx.read(rel)
    if verifier is None or data is None:
        return None
    try:
        cp = verify_checkpoint(data, verifier)
    except NoteError as exc:
        ctx.add(rel, None, f"{rule}.signature", f"does not verify against collector.pub: {exc}")
        return None
    # The origin is `<collector origin>/<provider>/<month>` (§5). A provider id may hold "/", so
    # only the whole origin tells acme's log from the log of provider "evil/acme": the collector
    # origin is the one the auditor was given (--origin), else collector.pub's key name (this
    # collector names its key after its origin, collector/tlog.py; §5 does not require it).
    base = ctx.origin if ctx.origin is not None else verifier.name
    want = f"{base}/{ctx.provider}/{ctx.month}"
    # Not accepted: a key named after the whole origin line (C2SP tlog-checkpoint's advice for a
    # key that signs one log). Its name would then be all the origin check rests on, and a
    # bundle signed by a key named "<c>/<other provider>/<month>" passed for any provider: such a
    # collector's auditor passes --origin.
    if cp.origin != want:
        tail = f"/{ctx.provider}/{ctx.month}"
        other = cp.origin[: -len(tail)] if cp.origin.endswith(tail) and len(cp.origin) > len(tail) else None
        if other is not None and other.startswith(f"{base}/"):  # a provider whose id ends in ours
            why = (f"the log of provider {other[len(base) + 1:] + tail[:-8]!r} at {base!r}, "
                   f"not of provider {ctx.provider!r}")
        elif ctx.origin is None and other is not None:
            # the value is not offered for copying: a forger chooses it; the operator knows it
            why = (f"its collector origin is not collector.pub's key name {base!r}: if this collector "
                   "names its key otherwise, ask its operator for its origin (not this bundle) and "
                   "pass it with --origin")
        else:
            why = f"not {want!r} (<collector origin>/<provider>/<month>)"
        ctx.add(rel, None, f"{rule}.origin", f"origin {cp.origin!r}: {why}")
    return cp


def _collector(ctx: _Ctx, pinned: str | None) -> NoteVerifier | None:
    data = ctx.read(B.COLLECTOR_PUB)
    if data is None:
        return None
    try:
        verifier = NoteVerifier.from_vkey(data.decode("utf-8").strip())
    except (NoteError, UnicodeDecodeError) as exc:
        ctx.add(B.COLLECTOR_PUB, 1, "collector.key", f"not a note verifier key: {exc}")
        return None
    if pinned is not None and verifier.vkey() != pinned.strip():
        # Whoever can rewrite the bundle can replace collector.pub too; only a key known out of
        # band proves the checkpoints are the collector's.
        ctx.add(B.COLLECTOR_PUB, 1, "collector.pinned",
                f"{verifier.vkey()} is not the expected {pinned} (if the collector rotated its key, "
                "check its hand-over statements: tr7-audit handover; if it replaced a lost or stolen "
                "key, no statement exists: ask its operator for the new key)")
    return verifier


def _check_log(ctx: _Ctx, cp: Checkpoint | None, lines: Lines) -> None:
    if cp is None:
        return
    if cp.size != lines.count:
        ctx.add(B.HEARTBEATS, None, "log.size",
                f"{lines.count} lines but the checkpoint commits to {cp.size} leaves")
    if lines.root != cp.root:
        ctx.add(B.HEARTBEATS, None, "log.root",
                "Merkle root of the lines differs from the checkpoint's root")


def _closed_size(ctx: _Ctx, verifier: NoteVerifier | None) -> int | None:
    """closed/checkpoint's size when it verifies (its findings come later, from _check_closed)."""
    data = None if verifier is None else ctx.read(B.CLOSED_CHECKPOINT)
    if verifier is None or data is None:
        return None
    try:
        return verify_checkpoint(data, verifier).size
    except NoteError:
        return None


def _fixed_instances(ctx: _Ctx) -> frozenset[str]:
    """Instances under a fixed license: the only ones whose declared capacities billing reads.

    Read quietly and early (the workers tally for billing); a catalog that does not load is
    reported by the billing check, which then computes nothing."""
    data = ctx.read(B.CATALOG)
    if data is None:
        return frozenset()
    try:
        cat = load_catalog(loads_strict(data, "json.format"))
    except Exception:  # any failure is reported later, where billing loads the catalog
        return frozenset()
    return frozenset(lic.instance for lic in cat.licenses if lic.model == "fixed")


class _Billing:
    """billing-v1.md's input recomputed from the workers' tallies, minus what the chain rules quarantine."""

    def __init__(self, ctx: _Ctx, lines: Lines, anchors: list[Heartbeat], only: frozenset[str]) -> None:
        self.ctx, self.lines, self.anchors, self.only = ctx, lines, anchors, only

    def activity(self, analysis: ChainAnalysis,
                 below: int | None) -> Callable[[], tuple[Activity, list[dict[str, object]]]]:
        def build() -> tuple[Activity, list[dict[str, object]]]:
            lines = self.lines
            assert lines.head is not None and lines.tail is not None
            tallies = [lines.head] if below is not None else [lines.head, lines.tail]
            taken = [i for i, hb in lines.good.items() if hb.digest in analysis.quarantined]
            taken += [i for i, digest in lines.copies if digest in analysis.quarantined]
            taken = [i for i in taken if below is None or i < below]
            if taken:  # rare (forks, breaks): re-read those lines and take every copy back
                minus = Tally(lines.head.m0)
                for i in sorted(taken):
                    hours: Hours = {}
                    decl: Decl = {}
                    hb = parse_unverified(read_line(self.ctx.root / B.HEARTBEATS, lines, i))
                    tally_heartbeat(hb, hours, decl, self.only, -1)
                    minus.merge(cells_of(hours), decl)
                tallies.append(minus)
            return tally_activity(tallies, self.only), analysis.chains_json()
        return build


def _check_closed(ctx: _Ctx, verifier: NoteVerifier | None, cp: Checkpoint | None, lines: Lines,
                  billing: _Billing, catalog: Any) -> None:
    closed = _checkpoint(ctx, B.CLOSED_CHECKPOINT, verifier, "closed")
    if closed is None:
        return
    if cp is not None and closed.origin != cp.origin:
        ctx.add(B.CLOSED_CHECKPOINT, None, "closed.origin", "origin differs from the current checkpoint's")
    s = closed.size
    if s > lines.count:
        ctx.add(B.CLOSED_CHECKPOINT, None, "closed.size", f"size {s} exceeds the {lines.count} lines")
        return
    assert s == lines.split and lines.split_root is not None, "the lines' root was taken at another size"
    if lines.split_root != closed.root:
        ctx.add(B.CLOSED_CHECKPOINT, None, "closed.root",
                f"root is not the Merkle root of the first {s} lines: the log was rewritten after close")
        return
    analysis = analyze([hb for i, hb in lines.good.items() if i < s], anchor_map(billing.anchors))
    _stage(ctx.progress, "recomputing closed/ billing", s, lambda: checks.compare_billing(
        ctx.add, ctx.root, billing.activity(analysis, s), catalog, ctx.month,
        B.CLOSED_USAGE, B.CLOSED_INVOICE, "closed", ctx.present))


def _stage(progress: Progress | None, stage: str, total: int, fn: Callable[[], None]) -> None:
    if progress is not None:
        progress(stage, 0, total)
    fn()
    if progress is not None:
        progress(stage, total, total)


def verify_bundle(path: Path | str, progress: Progress | None = None, workers: int | None = None,
                  collector_key: str | None = None, origin: str | None = None) -> Report:
    """Verify a bundle directory, or its .tar.gz (audit/archive.py); raise BundleError only when
    ``path`` is neither.

    A directory without manifest.json is a failed check (heartbeat-v1.md §6: "otherwise exit 1").

    ``collector_key``: the collector's verifier key as published out of band; when given,
    collector.pub must be exactly it. ``origin``: the collector origin of its checkpoints
    (`<origin>/<provider>/<month>`), for a collector whose key is not named after it.
    """
    given = Path(path)
    if not given.is_dir() and not is_archive(given):
        raise B.BundleError(f"{given} is neither a directory nor a bundle archive (.tar.gz)")
    report = Report(str(given))
    try:
        with opened(given) as root:
            ctx = _Ctx(root, report, progress, workers, origin=origin)
            try:
                _verify(ctx, collector_key)
            except Exception as exc:
                # A bundle is input from whoever hands it over: a check that meets something it did
                # not foresee must fail the bundle by name, keeping what was found before, not end
                # in a traceback that hides every other failure (and leaves --json empty).
                ctx.add("(verifier)", None, "verify.internal",
                        f"verification stopped on an unexpected error, the bundle is not verified: {exc!r}")
    except ArchiveError as exc:  # a damaged archive is evidence that fails, not a usage error
        report.findings.append(Finding(given.name, None, "archive.unreadable", str(exc), "error"))
    return report


def _verify(ctx: _Ctx, collector_key: str | None) -> None:
    root, progress, workers = ctx.root, ctx.progress, ctx.workers
    manifest = check_manifest(ctx.add, root)
    if manifest is None:
        return
    ctx.provider, ctx.month, ctx.present = manifest.provider, manifest.month, manifest.present
    ctx.report.provider, ctx.report.month = ctx.provider, ctx.month
    agents = checks.load_agents(ctx.add, _load_json(ctx, B.AGENTS, list, "agents.format"))
    verifier = _collector(ctx, collector_key)
    cp = _checkpoint(ctx, B.CHECKPOINT, verifier, "checkpoint")
    split = _closed_size(ctx, verifier)
    only = _fixed_instances(ctx) if ctx.month else None
    lines = verify_lines(ctx.add, B.HEARTBEATS, _path(ctx, B.HEARTBEATS), agents, ctx.month, progress,
                         workers if workers is not None else _default_workers, only=only, split=split)
    ctx.report.lines = lines.count
    if cp is not None:
        ctx.report.checkpoint = {"origin": cp.origin, "size": cp.size, "root": cp.root.hex()}
    _check_log(ctx, cp, lines)
    for finding in lines.findings:
        ctx.add(*finding)
    anchor_lines = verify_lines(ctx.add, B.ANCHORS, _path(ctx, B.ANCHORS), agents, ctx.month, None, 1,
                                anchors=True)
    for finding in anchor_lines.findings:
        ctx.add(*finding)
    anchors = list(anchor_lines.good.values())
    analysis = analyze(lines.good.values(), anchor_map(anchors))
    start = month_bounds(ctx.month)[0] if ctx.month else None
    ctx.report.chains = checks.check_chains(ctx.add, lines.good, analysis, agents,
                                            {hb.kid for hb in anchors}, start)
    catalog = _load_json(ctx, B.CATALOG, dict, "catalog.invalid")
    cat_provider = catalog.get("provider") if isinstance(catalog, dict) else None
    if isinstance(cat_provider, dict) and cat_provider.get("id") != ctx.provider:
        ctx.add(B.CATALOG, None, "catalog.provider",
                f"provider id {cat_provider.get('id')!r} is not the bundle's {ctx.provider!r}")
    if only is not None:
        billing = _Billing(ctx, lines, anchors, only)
        _stage(progress, "recomputing billing", len(lines.good), lambda: checks.compare_billing(
            ctx.add, root, billing.activity(analysis, None), catalog, ctx.month,
            B.USAGE, B.INVOICE, "billing", ctx.present))
        _check_closed(ctx, verifier, cp, lines, billing, catalog)


def _path(ctx: _Ctx, rel: str) -> Path | None:
    return ctx.root / rel if ctx.has(rel) else None


def _default_workers(n: int) -> int:
    # Process start-up and pickling only pay off for big logs; use every core the host offers.
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return 1 if n < 20_000 else max(1, min(cores, 8))
