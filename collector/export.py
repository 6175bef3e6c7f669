"""The audit bundle of heartbeat-v1.md §6 for one (provider, month), via audit.bundle."""

import glob
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from sqlalchemy.engine import Connection, Engine

from audit.archive import SUFFIX, archive_path, pack
from audit.bundle import BundleError, ClosedState, check_target, write_bundle
from billing import PricingError
from collector import accounting, credentials, db, evidence, keyrotation, reference, tlog
from collector.settings import Settings

log = logging.getLogger(__name__)
Progress = Callable[[str, int, int], None]  # (stage, lines done, lines in all), as tr7-audit's


def export(
    conn: Connection, settings: Settings, provider: str, month: str, out: Path, overwrite: bool = False,
    progress: Progress | None = None,
) -> tuple[Path, bool]:
    """Write the bundle; returns (path, whether the aggregates agreed with the full recomputation).

    The leaves are read twice as streams (the bill, then the file), never held: memory grows by
    each line's chain fields only, ~0.4 kB (a month of 1.7 million heartbeats took more than 15 GB)."""
    check_target(out, overwrite)  # before the month's bill is recomputed, not after
    size = tlog.log_size(conn, provider, month)
    anchors = [r.jws for r in evidence.anchor_rows(conn, provider, month)]
    _cid, catalog = accounting.catalog_for(conn, provider, month)
    c = accounting.closed(conn, provider, month)
    # The bundle's documents are the full recomputation over its own lines, without adjustments.
    billing = None if progress is None else lambda done, total: progress("recomputing the bill", done, total)
    try:
        usage, invoice = reference.full_result(conn, provider, month, size, catalog, billing)
    except PricingError as exc:
        fix = "fix the catalog (apply)" if c is None else accounting.amend_hint(provider, month)
        why = f"{exc.message}, in heartbeats of {month}, which its catalog cannot price: {fix}"
        raise PricingError(exc.license, exc.capacity, why) from exc
    agrees = accounting.same_docs((usage, invoice), accounting.own_result(conn, provider, month))
    closed_state = None if c is None else ClosedState(c.checkpoint, c.usage, c.invoice)
    path = write_bundle(
        out,
        provider=provider,
        month=month,
        leaves=_counted(tlog.iter_leaf_tokens(conn, provider, month, size), size, progress),
        anchors=anchors,
        checkpoint=tlog.checkpoint(conn, settings, provider, month, size),
        # the database's key, read again if rotated since this process loaded collector.key (a
        # serving process handed out bundles naming the retired, or replaced, key)
        collector_vkey=keyrotation.current_signer(conn, settings).verifier_key(),
        agents=[
            {k: a[k] for k in ("kid", "public_key", "name", "enrolled_at", "revoked_at")}
            for a in credentials.list_agents(conn, provider)
        ],
        catalog=catalog,
        usage=usage,
        invoice=invoice,
        closed=closed_state,
        overwrite=overwrite,
    )
    return path, agrees


def _counted(tokens: Iterator[str], total: int, progress: Progress | None) -> Iterator[str]:
    for n, token in enumerate(tokens, 1):
        if progress is not None and n % 2000 == 0:
            progress("writing heartbeats.jws", n, total)
        yield token
    if progress is not None:
        progress("writing heartbeats.jws", total, total)


def staging(dest: Path, replace: bool = False) -> Path:
    """A new directory beside the archive ``dest`` to write its bundle in first (the same file
    system: the bundle and the archive need room side by side until it is packed), named after
    this process. One left by a run that was killed (its process gone) is removed first: it is a
    whole bundle's size, and nothing else would ever remove it."""
    if dest.exists() and not replace:
        raise BundleError(f"{dest} exists; refusing to write a bundle archive over it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    for old in dest.parent.glob(f".{glob.escape(dest.name)}.*.*"):
        pid = old.name.removeprefix(f".{dest.name}.").split(".")[0]
        if old.is_dir() and not old.is_symlink() and pid.isdigit() and not _running(int(pid)):
            log.warning("removing %s, left by an interrupted run (process %s)", old, pid)
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f".{dest.name}.{os.getpid()}.", dir=dest.parent))


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def export_archive(
    engine: Engine, settings: Settings, provider: str, month: str, out: Path, replace: bool = False,
    progress: Progress | None = None,
) -> tuple[Path, bool]:
    """export() as one .tar.gz (audit/archive.py): OUT.tar.gz, the bundle under OUT's name. The
    bundle is read in one snapshot, packed after it: compressing a big month's gigabytes takes
    minutes, and PostgreSQL ends a session idle that long in a transaction (collector/pgsession.py)."""
    dest = archive_path(out)
    stage = staging(dest, replace)
    try:
        with db.read_conn(engine) as conn:
            path, agrees = export(conn, settings, provider, month, stage / dest.name.removesuffix(SUFFIX),
                                  progress=progress)
        pack(path, dest, replace=replace)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return dest, agrees
