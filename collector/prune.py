"""`tr7-collector prune`: a closed month's audit bundle archived and verified, then its JWS dropped.

Why (docs/collector.md, "Pruning old months"): the evidence, ~1.6 kB a heartbeat, is most of what
a collector stores, and a month's audit bundle holds all of it in the form auditors verify. So a
closed month can leave the database: its bundle is written and verified here first (the same
checks as `tr7-audit verify`, against this collector's key), then the month is sealed (ingest
refuses its new lines: it could no longer be recomputed with them) and its JWS are dropped.

What stays: every leaf's small columns and hash (dedup answers `duplicate` to a retry, the chain
rules, checkpoints and proofs, the boundary alerts), the hour aggregates and the frozen close (the
bill), and the JWS that later work still reads: each key's last heartbeat of the month (the next
month's anchors, in its bundle) and the quarantined heartbeats with every other one of the hours
they touch (the bill from aggregates takes them back, collector/evidence.py `_rebuild`).
"""

import hashlib
import shlex
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from audit.archive import SUFFIX, archive_path, pack
from collector import accounting, db, evidence, keyrotation, registry, tlog
from collector import schema as s
from collector.export import staging
from collector.settings import Settings
from protocol.timefmt import format_time, next_month

Progress = Callable[[str, int, int], None]  # (stage, done, total), as tr7-audit's
CHUNK = 5000  # leaves a transaction drops: ingest waits for at most one chunk (SQLite's write lock)
HOUR = 3600


class PruneRefused(accounting.AccountingError):
    """Nothing was dropped, and why (the message says what to do)."""


class _LogGrew(PruneRefused):
    """Heartbeats arrived while the bundle was written: the bundle lacks them."""


@dataclass(frozen=True)
class Pruned:
    provider: str
    month: str
    archive: Path
    manifest_sha256: str
    size: int  # the log's leaves: the bundle's lines
    kept: int  # leaves whose JWS stay in the database
    dropped: int  # leaves whose JWS this run dropped (fewer when it finishes an interrupted prune)
    pruned_at: int
    resumed: bool


def prune(settings: Settings, engine: Engine, provider: str, month: str, out: Path, now: int,
          progress: Progress | None = None, compress: bool = False, copy_with: str | None = None) -> Pruned:
    """Archive, verify, seal, drop; or finish a prune that was cut short (``out`` is then unused).
    ``compress``: the bundle is kept as OUT.tar.gz (audit/archive.py), verified before it is packed
    and the archive read back against it. ``copy_with``: a command that copies the archive
    elsewhere (_copy), run before anything is sealed or dropped."""
    with db.read_conn(engine) as conn:
        registry.require_known_provider(conn, provider)
        row = tlog.pruned(conn, provider, month)
        if row is not None:  # sealed: finish the drop
            keep = kept(conn, provider, month)
            done = (int(row.pruned_at), int(row.size), row.archive, row.manifest_sha256, int(row.kept))
    if row is None:
        if not out.is_absolute():
            out = out.absolute()  # recorded: the operator's later reading must not depend on a cwd
        earlier = archive_path(out) if compress else out
        reused = earlier.exists() and (not earlier.is_dir() or any(earlier.iterdir()))
        if reused:
            # the archive of an earlier prune (the month unpruned since): the timer's run refused to
            # write over it every time, and stopped before every later month. Never removed below.
            size, digest, keep = _earlier(settings, engine, provider, month, earlier, progress)
            out = earlier
        elif compress:
            dest = archive_path(out)
            stage = staging(dest)
            bundle, refused = stage / dest.name.removesuffix(SUFFIX), False
            try:
                try:
                    size, digest, keep = _archive(settings, engine, provider, month, bundle, progress)
                except PruneRefused:
                    refused = True  # the bundle stays in the staging directory, which the message names
                    raise
                pack(bundle, dest)
            finally:
                if not refused:
                    shutil.rmtree(stage, ignore_errors=True)
            out = dest
        else:
            size, digest, keep = _archive(settings, engine, provider, month, out, progress)
        if copy_with:
            _copy(copy_with, out, provider, month, earlier=reused)
        n = len(keep)
        try:
            done = db.write_tx(engine, lambda c: _seal(c, provider, month, size, str(out), digest, n, now))
        except _LogGrew as exc:
            if reused:
                raise PruneRefused(f"{exc}; the earlier archive {out} is kept (it holds the log as it was "
                                   "before them)") from None
            # A bundle that lacks lines is no archive of the month: kept at the timer's fixed path
            # (DIR/PROVIDER/YYYY-MM.tar.gz), it made every later run refuse to write over it, and
            # an operator could take it for the month's archive. What this run wrote goes (the
            # files of a directory, which may be the operator's own, or behind a link).
            target = out.resolve()
            if target.is_dir():
                for child in target.iterdir():
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child)
                    else:
                        child.unlink()
            else:
                target.unlink(missing_ok=True)
            copied = f"; the copy {copy_with!r} made of it lacks them too" if copy_with else ""
            raise PruneRefused(f"{exc}; its bundle {out} lacked them and was removed{copied}") from None
    pruned_at, size, archive, digest, kept_n = done
    dropped = 0
    for lo in range(0, size, CHUNK):
        hi = min(size, lo + CHUNK)

        # a def, not a lambda: mypy infers no type for a lambda whose defaults take the loop's values
        def drop(c: Connection, lo: int = lo, hi: int = hi) -> int:
            return _drop(c, provider, month, lo, hi, keep)

        dropped += db.write_tx(engine, drop)
        if progress is not None:
            progress("dropping the month's heartbeats", hi, size)
    P = s.prunes.c
    db.write_tx(engine, lambda c: c.execute(
        s.prunes.update().where(P.provider == provider, P.month == month, P.done_at.is_(None))
        .values(done_at=now)))
    return Pruned(provider, month, Path(archive), digest, size, kept_n, dropped, pruned_at, row is not None)


def _archive(settings: Settings, engine: Engine, provider: str, month: str, out: Path,
             progress: Progress | None) -> tuple[int, str, frozenset[int]]:
    """Write the month's bundle to ``out`` and verify it; (its lines, its manifest's SHA-256, the
    leaves to keep). All read in one snapshot: if the log still has as many leaves when it is
    sealed, it has these (it only grows), so the seal need not look again under its lock."""
    from audit.verify import verify_bundle
    from collector.export import export

    with db.read_conn(engine) as conn:
        _require_closed(conn, provider, month)
        size = tlog.log_size(conn, provider, month)
        if size == 0:
            raise PruneRefused(f"{provider} {month} holds no heartbeats: nothing to prune")
        path, agrees = export(conn, settings, provider, month, out, progress=progress)
        keep = kept(conn, provider, month)
        pinned = keyrotation.current_signer(conn, settings).verifier_key()
    if not agrees:
        raise PruneRefused(f"{provider} {month}: the bill from the aggregates disagrees with the "
                           "recomputation from the heartbeats; the evidence stays (the bundle in "
                           f"{path} holds the latter)")
    report = verify_bundle(path, progress=progress, collector_key=pinned)
    if not report.ok:
        first = "; ".join(f"{f.rule}: {f.message}" for f in report.errors[:3])
        raise PruneRefused(f"the bundle written to {path} does not verify ({first}); the evidence stays")
    return size, hashlib.sha256((path / "manifest.json").read_bytes()).hexdigest(), keep


def _require_closed(conn: Connection, provider: str, month: str) -> None:
    if accounting.closed(conn, provider, month) is None:
        raise PruneRefused(f"{provider} {month} is not closed: close it first (tr7-collector close); "
                           "only a closed month's evidence can leave the database")


def _earlier(settings: Settings, engine: Engine, provider: str, month: str, path: Path,
             progress: Progress | None) -> tuple[int, str, frozenset[int]]:
    """_archive's answer for a bundle already at ``path``: taken when it verifies and its checkpoint
    is the log's as it is now (same size and root: the same heartbeats), else PruneRefused saying
    why and what to do. Its signature may be an older key's (rotated since): the root is compared."""
    from audit.archive import READ_ERRORS, ArchiveError, is_archive, member
    from audit.verify import verify_bundle

    with db.read_conn(engine) as conn:
        _require_closed(conn, provider, month)
        size = tlog.log_size(conn, provider, month)
        ours = tlog.checkpoint(conn, settings, provider, month, size)
        keep = kept(conn, provider, month)
    aside = (f"move {path} aside (keep it: it is evidence of what was checkpointed when it was made) and "
             "prune again")
    report = verify_bundle(path, progress=progress)
    try:
        if not report.ok:
            raise ValueError("it does not verify: " + "; ".join(f.rule for f in report.errors[:3]))
        if is_archive(path):
            with member(path, "checkpoint") as f:
                theirs = f.read().decode("utf-8")
            with member(path, "manifest.json") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
        else:
            theirs = (path / "checkpoint").read_text("utf-8")
            digest = hashlib.sha256((path / "manifest.json").read_bytes()).hexdigest()
    except (*READ_ERRORS, ArchiveError, OSError, ValueError) as exc:
        raise PruneRefused(f"{path} exists and is no archive of {provider} {month} ({exc}): {aside}") from exc
    body, mine = theirs.split("\n\n", 1)[0].split("\n"), ours.split("\n\n", 1)[0].split("\n")
    if body[:3] != mine[:3]:
        made = body[1] if len(body) > 1 else "?"
        raise PruneRefused(f"{path} is an archive of {provider} {month} at {made} heartbeats; the log now "
                           f"holds {size} (heartbeats arrived after it was unpruned): {aside}")
    return size, digest, keep


COPY_TIMEOUT = 3600  # seconds a copy command may take: a month's archive to slow remote storage


def _copy(command: str, archive: Path, provider: str, month: str, earlier: bool = False) -> None:
    """Run the operator's copy command on the archive just verified (`prune --copy-with`), split
    like a shell line but run without a shell, {archive}, {provider} and {month} replaced in its
    words (plain replacement: other braces, as in a jq filter, stay). Its output goes where this
    command's does (the journal, under the timer). It failing leaves the month as it was: the
    archive is removed (the evidence is all still in the database), so the next run writes it
    again; a copy the tool left half-done remotely is the tool's to finish or overwrite."""
    bad: ValueError | None
    try:
        words = shlex.split(command)
    except ValueError as exc:  # the CLI checks it first; a caller that did not gets the same outcome
        words, bad = [command], exc
    else:
        bad = None
    argv = [w.replace("{archive}", str(archive)).replace("{provider}", provider).replace("{month}", month)
            for w in words]
    try:
        if bad is not None:
            raise OSError(f"not a command line: {bad}")
        rc = subprocess.run(argv, stdin=subprocess.DEVNULL, timeout=COPY_TIMEOUT, check=False).returncode
        why = None if rc == 0 else f"exited with status {rc}"
    except subprocess.TimeoutExpired:
        why = f"took more than {COPY_TIMEOUT} s"
    except OSError as exc:
        why = f"could not be run ({exc})"
    if why is None:
        return
    if earlier:  # not this run's to remove: an earlier prune's archive, evidence of its own
        raise PruneRefused(f"{provider} {month}: the copy command ({words[0]}) {why}; nothing was dropped "
                           f"and the earlier archive {archive} is kept: prune again once the copy works")
    if archive.is_dir():
        shutil.rmtree(archive, ignore_errors=True)
    else:
        archive.unlink(missing_ok=True)
    raise PruneRefused(f"{provider} {month}: the copy command ({words[0]}) {why}; nothing was dropped and "
                       f"{archive} was removed (the month's heartbeats are all still in the database): "
                       "prune again once the copy works")


def _seal(conn: Connection, provider: str, month: str, size: int, archive: str, digest: str, n: int,
          now: int) -> tuple[int, int, str, str, int]:
    """Under the log's lock: the log is still the bundle's; record the prune; ingest refuses from here."""
    have, _partial, sealed = tlog.lock_log_state(conn, provider, month)
    if sealed is not None:  # another run (the timer's, an operator's) sealed it since our check
        row = tlog.pruned(conn, provider, month)
        raise PruneRefused(f"{provider} {month} was pruned meanwhile by another run, into "
                           f"{row.archive if row is not None else '?'}; this run's archive {archive} is "
                           "unused and may be deleted")
    if have != size:
        raise _LogGrew(f"{provider} {month}: {have - size} heartbeat(s) arrived while the bundle was "
                       f"written (log size {size} -> {have}); nothing dropped: prune again (the timer does "
                       "at its next run)")
    conn.execute(s.prunes.insert().values(provider=provider, month=month, pruned_at=now, size=size,
                                          archive=archive, manifest_sha256=digest, kept=n))
    conn.execute(s.logs.update().where(s.logs.c.provider == provider, s.logs.c.month == month)
                 .values(pruned_at=now))
    return now, size, archive, digest, n


def kept(conn: Connection, provider: str, month: str) -> frozenset[int]:
    """The leaf indexes whose JWS stay: the next month's anchors (as frozen by its close, and the
    latest), and the quarantined leaves with every leaf of the hours they touch."""
    after = next_month(month)
    out = {int(r.idx) for latest in (False, True)
           for r in evidence.anchor_rows(conn, provider, after, latest)}
    bad = sorted(evidence.chain_analysis(conn, provider, month).quarantined)
    if bad:
        L = s.leaves.c
        times = conn.execute(sa.select(L.time).where(L.provider == provider, L.month == month,
                                                     L.digest.in_(bad))).scalars()
        for hour in sorted({int(t) - int(t) % HOUR for t in times}):
            out.update(conn.execute(sa.select(L.idx).where(
                L.provider == provider, L.month == month, L.time >= hour, L.time < hour + HOUR)).scalars())
    return frozenset(out)


def _drop(conn: Connection, provider: str, month: str, lo: int, hi: int, keep: frozenset[int]) -> int:
    # Under the log's lock, and only while the month is still sealed: an `unprune` that lifted the
    # seal meanwhile left the rest of the month's heartbeats to be dropped unsealed, in no archive
    # the month's new heartbeats would reach (unprune's _unseal waits for this lock too)
    if tlog.lock_log_state(conn, provider, month)[2] is None:
        raise PruneRefused(f"{provider} {month} was unpruned while this prune dropped its heartbeats: "
                           "it stopped, and the month's heartbeats not dropped yet stay")
    L = s.leaves.c
    spare = sorted(i for i in keep if lo <= i < hi)
    q = (
        s.leaves.update()
        .where(L.provider == provider, L.month == month, L.idx >= lo, L.idx < hi,
               sa.func.length(L.jws) > 0, L.idx.not_in(spare))
        # '' reads back as jwsstore.PRUNED on both engines (TEXT on SQLite, bytea on PostgreSQL)
        .values(jws=sa.literal_column("''"))
    )
    return int(conn.execute(q).rowcount)


def due(conn: Connection, provider: str, before: str) -> list[str]:
    """The months of the provider before ``before`` to prune, oldest first: closed ones with
    heartbeats not pruned yet, and prunes cut short (their drop is finished)."""
    C, G, P = s.closes.c, s.logs.c, s.prunes.c
    q = sa.select(C.month).join(s.logs, sa.and_(G.provider == C.provider, G.month == C.month)).where(
        C.provider == provider, C.month < before, G.size > 0,
        ~sa.exists().where(P.provider == C.provider, P.month == C.month, P.done_at.is_not(None)))
    return list(conn.execute(q.order_by(C.month)).scalars())


def listing(conn: Connection, provider: str | None = None) -> list[dict[str, object]]:
    q = sa.select(s.prunes).order_by(s.prunes.c.provider, s.prunes.c.month)
    if provider is not None:
        q = q.where(s.prunes.c.provider == provider)
    return [
        {"provider": r.provider, "month": r.month, "pruned_at": format_time(int(r.pruned_at)),
         "done_at": None if r.done_at is None else format_time(int(r.done_at)),
         "size": int(r.size), "kept": int(r.kept), "archive": r.archive, "manifest_sha256": r.manifest_sha256}
        for r in conn.execute(q)
    ]
