"""Custody of the collector's key and evidence: `backup`, `key`, `accept-restore`, `prune` and `unprune`.

`backup`: the key, origin and a consistent copy of the SQLite database taken while the service
runs (PostgreSQL: pg_dump, named in the output); `key`: the verifier key to publish for
auditors, `key rotate` (collector/keyrotation.py); `accept-restore`: going on from an older
backup, knowingly (collector/highwater.py); `prune`: a closed month's bundle archived, then its
evidence dropped from the database (collector/prune.py), and `unprune` (collector/unprune.py)."""

import argparse
import contextlib
import json
import os
import shlex
import shutil
import sqlite3
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from collector import db, highwater, registry
from collector import schema as s
from collector.settings import Settings, SetupError
from protocol.timefmt import format_time, month_of, previous_month

if TYPE_CHECKING:
    from collector.prune import Pruned

COMMANDS = ("backup", "key", "accept-restore", "prune", "unprune")


def add_parsers(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "backup", parents=parents,
        help="copy collector.key, origin and (SQLite) a consistent snapshot of the database to DIR",
    )
    p.add_argument("--out", type=Path, required=True, help="a new or empty directory")
    k = sub.add_parser(
        "key", parents=parents,
        help="the checkpoints' verifier key, to publish for auditors (tr7-audit --collector-key); "
             "`key rotate`: a new one; `key replace --reason R`: a new one when the old is lost or "
             "untrusted; `key history`: the retired ones",
    )
    k.add_argument("action", nargs="?", choices=("show", "rotate", "replace", "history"), default="show",
                   help="show (default): the current verifier key; rotate: make a new checkpoint key "
                        "and cosign every stored checkpoint with it; replace: the same without the old "
                        "private key, and so without a hand-over statement (a key lost or compromised); "
                        "history: the retired keys, oldest first, with their hand-over statements "
                        "(JSON, as GET /v1/log/key)")
    k.add_argument("--reason", help="with replace: why (recorded in the key history, for auditors)")
    sub.add_parser("accept-restore", parents=parents,
                   help="go on from a database restored from an older backup (says what it lost)")
    p = sub.add_parser(
        "prune", parents=parents,
        help="archive a closed month's audit bundle to --out, verify it, then drop the month's "
             "heartbeats from the database (it then takes no more); --list: the months pruned",
    )
    p.add_argument("--provider", help="required with --month; with --before: default every provider, "
                                      "each into --out/PROVIDER/YYYY-MM; with --list: default every one")
    p.add_argument("--month", type=_month, help="YYYY-MM, a closed month")
    p.add_argument("--before", type=_month, metavar="YYYY-MM",
                   help="instead of --month: every closed month before this one not pruned yet, oldest "
                        "first, each into --out/YYYY-MM (for a schedule, e.g. 13 months back)")
    p.add_argument("--keep-months", type=_count, metavar="N",
                   help="instead of --month or --before: keep the current month (UTC) and the N before "
                        "it, prune the closed months older than them (what tr7-collector-prune.timer runs)")
    p.add_argument("--out", type=Path, help="a new or empty directory for the bundle; keep it")
    p.add_argument("--copy-with", metavar="CMD", type=_command,
                   help="after each archive is written and verified, before anything is dropped: run "
                        "CMD (no shell; {archive}, {provider} and {month} replaced), e.g. `rclone copyto "
                        "{archive} offsite:tr7/{provider}/{month}.tar.gz`; if it fails, nothing is dropped "
                        "and the archive is removed (empty: no copy)")
    p.add_argument("--compress", action="store_true",
                   help="keep each bundle as one .tar.gz (OUT.tar.gz, or OUT/YYYY-MM.tar.gz), ~1/40 of "
                        "the directory; verified before it is packed, the archive read back against it")
    p.add_argument("--list", action="store_true", help="the months pruned, with their archives (JSON)")
    p = sub.add_parser(
        "unprune", parents=parents,
        help="put a pruned month's heartbeats back from its archived bundle (each line checked "
             "against the log's leaf hash) and let it take heartbeats again",
    )
    p.add_argument("--provider", required=True)
    p.add_argument("--month", type=_month, required=True)
    p.add_argument("--from", dest="bundle", type=Path, required=True,
                   help="the archived bundle: its directory or its .tar.gz")


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.cmd == "backup":
        for line in backup(settings, args.out):
            print(line)
    elif args.cmd == "key":
        _key(args.action, settings, args.reason)
    elif args.cmd == "prune":
        _prune(args, settings)
    elif args.cmd == "unprune":
        from audit.progress import StderrProgress
        from collector.unprune import unprune

        n = unprune(settings.open(), args.provider, args.month, args.bundle, StderrProgress(quiet=False))
        print(f"{args.provider} {args.month}: {n} heartbeats put back from {args.bundle}; the month "
              "exports again and takes heartbeats again")
    else:
        engine = settings.open(highwater=False)
        lost = db.write_tx(engine, lambda c: highwater.accept(engine, settings.data_dir, c))
        if lost is None:
            print("accepted; the high-water mark could not be read, so what this database lacks is "
                  "unknown: compare it with your latest backup's backup.json, and tell the auditors of "
                  "any month it lacks heartbeats of that checkpoints signed before describe other trees")
        elif not lost:
            print("the database holds every log as far as this data directory has seen: nothing lost")
        else:
            print(f"accepted; behind what was seen: {highwater.describe(lost)}. Tell the auditors of these "
                  "months: checkpoints signed before describe other trees")
    return 0


def _month(text: str) -> str:
    from collector.cliargs import month_arg  # cliargs imports this module

    return month_arg(text)


def _prune(args: argparse.Namespace, settings: Settings) -> None:
    from audit.progress import StderrProgress
    from collector import prune

    engine = settings.open()
    if args.list:
        with db.read_conn(engine) as conn:
            print(json.dumps(prune.listing(conn, args.provider), indent=2))
        return
    if args.keep_months is not None and not (args.month or args.before):
        args.before = keep_cutoff(int(time.time()), args.keep_months)
    elif args.keep_months is not None:
        raise SetupError("prune takes one of --month, --before and --keep-months")
    if not (args.out and bool(args.month) != bool(args.before) and (args.provider or args.before)):
        raise SetupError("prune needs --out and either --provider with --month, or --before or "
                         "--keep-months (every provider, or --provider's) (or --list)")
    copy = (args.copy_with or "").strip() or None  # empty: the unit's default, no copy
    if args.month:
        _pruned(prune.prune(settings, engine, args.provider, args.month, args.out, int(time.time()),
                            StderrProgress(quiet=False), args.compress, copy))
        return
    with db.read_conn(engine) as conn:
        if args.provider:
            registry.require_known_provider(conn, args.provider)  # a typo: not "nothing to prune"
            todo = [(args.provider, m, args.out / m) for m in prune.due(conn, args.provider, args.before)]
        else:  # every provider, each into its own directory
            ids = conn.execute(sa.select(s.providers.c.id).order_by(s.providers.c.id)).scalars().all()
            todo = [(p, m, args.out / p / m) for p in ids for m in prune.due(conn, p, args.before)]
    if not todo:
        print(f"no closed month before {args.before} left to prune"
              + (f" for {args.provider}" if args.provider else " for any provider"))
    for provider, m, out in todo:  # one failure stops the rest: later ones wait for it to be seen
        _pruned(prune.prune(settings, engine, provider, m, out, int(time.time()),
                            StderrProgress(quiet=False), args.compress, copy))


def keep_cutoff(now: int, keep: int) -> str:
    """The first month kept by --keep-months: ``keep`` months before the current one (UTC)."""
    month = month_of(now)
    for _ in range(keep):
        month = previous_month(month)
    return month


def _command(text: str) -> str:
    """--copy-with: split as prune will split it, now, so that an unbalanced quote is this
    command's error (exit 2), not a traceback after the whole month was archived and verified."""
    try:
        shlex.split(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a command line: {exc}") from None
    return text


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number of months (0 or more), got {text!r}")
    return value


def _pruned(r: "Pruned") -> None:
    if r.resumed:
        print(f"{r.provider} {r.month} was pruned at {format_time(r.pruned_at)}; its bundle is in "
              f"{r.archive} (nothing was written to --out: this run only finished the drop)")
    else:
        print(f"archived and verified: {r.archive} ({r.size} heartbeats; manifest.json SHA-256 "
              f"{r.manifest_sha256})")
    print(f"dropped from the database: {r.dropped} heartbeats; kept: {r.kept} (the next month's anchors, "
          "quarantined hours)")
    print(f"{r.provider} {r.month} takes no more heartbeats; its bill and checkpoints stay. Keep the "
          "bundle: it is the month's only copy now (`tr7-collector unprune` puts it back)")


def _key(action: str, settings: Settings, reason: str | None) -> None:
    from collector import keyrotation
    from collector.tlog import signer  # tlog imports settings, as this module does

    if reason is not None and action != "replace":
        raise SetupError("--reason goes with `key replace`")
    if action == "replace":
        from audit.progress import StderrProgress

        r = keyrotation.replace(settings, int(time.time()), reason or "",
                                StderrProgress(quiet=False, unit="notes"))
        print(f"new checkpoint key: {r.new}")
        print(f"replaced, without a hand-over: {r.old}")
        print(f"cosigned with the new key: {r.checkpoints} stored checkpoints, {r.closes} closed months")
        if (settings.data_dir / keyrotation.REPLACED_KEY).exists():
            print(f"the old key file is now {settings.data_dir / keyrotation.REPLACED_KEY}: destroy it "
                  "if it was compromised")
        print("other hosts on this database: copy collector.key from this data directory to theirs. "
              "Auditors who pinned the old key must be given the new one by a channel they trust: "
              "no statement signed by the old key vouches for it (`key history` records the reason)")
        return
    if action == "rotate":
        from audit.progress import StderrProgress

        r = keyrotation.rotate(settings, int(time.time()), StderrProgress(quiet=False, unit="notes"))
        # The statement alone on stdout (`key rotate > statement-1` is what `tr7-audit handover`
        # reads: with the lines below in it, it read as a bad signature); the rest on stderr.
        for line in (f"new checkpoint key: {r.new}", f"retired: {r.old}",
                     f"cosigned with the new key: {r.checkpoints} stored checkpoints, "
                     f"{r.closes} closed months",
                     "the service on this host signs with it from its next checkpoint; other hosts on this "
                     "database: copy collector.key from this data directory to theirs (until then they "
                     "ingest but sign no checkpoint; no restart needed)",
                     "give auditors the new key and the statement on standard output, signed by both keys "
                     "(`tr7-collector key history` keeps it too)"):
            print(line, file=sys.stderr)
        print(r.statement, end="")
        return
    engine = settings.open()
    if action == "history":
        with db.read_conn(engine) as conn:
            print(json.dumps(keyrotation.history(conn), indent=2))
        return
    print(signer(settings).verifier_key())


def backup(settings: Settings, out: Path) -> list[str]:
    """Write the backup; returns what the operator should read (one line each)."""
    if out.exists() and any(out.iterdir()):
        raise SetupError(f"{out} is not empty: back up into a new directory")
    # Nothing is made to be backed up: a data dir without its key, or a database without the
    # schema, is an operator's mistake (a wrong --data-dir or --db), said in one line.
    if not (settings.data_dir / "collector.key").exists():
        raise SetupError(f"{settings.data_dir} holds no collector.key: not a collector's data directory "
                         "(--data-dir)")
    if settings.db_defaulted and not (settings.data_dir / "collector.db").exists():
        raise SetupError(f"no database {settings.data_dir / 'collector.db'} (--db)")
    if not sa.inspect(settings.engine).has_table(s.meta.name):
        raise SetupError(f"{settings.engine.url.render_as_string(hide_password=True)} holds no collector "
                         "schema: nothing to back up (--db)")
    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    engine = settings.open(migrate=False)
    try:
        return _write_backup(settings, engine, out)
    except (OSError, sqlite3.Error, sa.exc.SQLAlchemyError) as exc:
        # A full disk left a traceback and a directory holding the key and half a database but no
        # backup.json, which the next attempt refused as "not empty": a partial backup is none.
        for name in (*BACKUP_FILES, "collector.db-journal"):
            with contextlib.suppress(OSError):
                (out / name).unlink()
        if made:
            with contextlib.suppress(OSError):
                out.rmdir()
        reason = getattr(exc, "strerror", None) or db.error_reason(exc)
        raise SetupError(f"backup into {out} failed: {reason}; nothing of it is kept there") from exc


BACKUP_FILES = ("collector.key", "origin", "collector.db", "backup.json")


def _write_backup(settings: Settings, engine: Any, out: Path) -> list[str]:
    notes = []
    # The key first: without it no checkpoint of a past month can be verified again.
    for name in ("collector.key", "origin"):
        shutil.copy2(settings.data_dir / name, out / name)
    os.chmod(out / "collector.key", 0o600)
    if db.is_sqlite(engine):
        # SQLite's online backup: one read transaction, so a snapshot of every committed
        # heartbeat, those still in the -wal file included (a copy of collector.db missed them).
        src = sqlite3.connect(f"file:{engine.url.database}?mode=ro", uri=True)
        dst = sqlite3.connect(out / "collector.db")
        try:
            with dst:
                src.backup(dst)
            # backup.json describes the copy itself: read from the live database before it, the
            # sizes missed what the service appended meanwhile
            rows = dst.execute(f"SELECT provider, month, size FROM {s.logs.name}")
            logs = {f"{provider}/{month}": int(size) for provider, month, size in rows}
            row = dst.execute("SELECT version_num FROM alembic_version").fetchone()
            revision = row[0] if row else None
        finally:
            dst.close()
            src.close()
        os.chmod(out / "collector.db", 0o600)
        notes.append(f"database: {out / 'collector.db'} (restore: docs/collector.md, Backup and restore)")
    else:
        with db.read_conn(engine) as conn:  # the dump, taken after, holds at least these
            logs = {f"{r.provider}/{r.month}": int(r.size) for r in conn.execute(sa.select(s.logs))}
            revision = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
        url = engine.url.set(drivername="postgresql").render_as_string(hide_password=True)
        notes.append(f"database: PostgreSQL is not copied by this command; run: pg_dump -Fc '{url}' "
                     f"> {out / 'collector.pgdump'}")
    meta = {"made_at": format_time(int(time.time())), "revision": revision, "logs": logs,
            "database": engine.url.render_as_string(hide_password=True)}
    (out / "backup.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    notes.insert(0, f"key and origin: {out / 'collector.key'}, {out / 'origin'} (keep a copy offline: "
                    "without the key no bundle of a past month verifies)")
    return notes
