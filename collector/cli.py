"""tr7-collector: serve, migrate, apply, agent, token, bill, close, export, import, user, account;
backup, key, accept-restore, prune and unprune (collector/custody.py)."""

import argparse
import json
import sys
import time
from typing import Any

from sqlalchemy.engine import Engine

from collector import accounting, credentials, custody, db, registry
from collector.cliargs import build_parser
from collector.gctune import tune_gc
from collector.settings import Settings, SetupError, schema_line
from collector.tlog import EvidencePruned
from protocol.timefmt import format_time


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    tune_gc()  # after the imports: they are frozen out of collection
    url = ""
    try:
        settings = Settings.resolve(args.data_dir, args.db, args.origin)
        url = settings.db_url
        return _run(args, settings)
    except (SetupError, registry.RegistryError, accounting.AccountingError, EvidencePruned) as exc:
        print(f"tr7-collector: {exc}", file=sys.stderr)
        return 1
    except db.Retry as exc:  # another process's commits changed what it read, attempt after attempt
        print(f"tr7-collector: {exc}; nothing was changed: run it again", file=sys.stderr)
        return 1
    except OSError as exc:  # a file named on the command line: missing, unreadable, a directory
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"tr7-collector: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        from sqlalchemy.exc import OperationalError

        from audit.bundle import BundleError
        from billing.errors import CatalogError, PricingError

        # BundleError: --out not empty, an archive already there
        if isinstance(exc, CatalogError | PricingError | BundleError):
            print(f"tr7-collector: {exc}", file=sys.stderr)
            return 1
        from sqlalchemy.exc import DatabaseError

        if isinstance(exc, DatabaseError) and not isinstance(exc, OperationalError) and \
                "file is not a database" in str(exc.orig):
            print(f"tr7-collector: the database file is not an SQLite database ({exc.orig}): a wrong "
                  "file restored?", file=sys.stderr)
            return 1
        if isinstance(exc, OperationalError):
            # An unreachable or refusing database is an operator's problem, not a crash: one line.
            reason = db.error_reason(exc)
            hint = db.sqlite_hint(url, reason)
            print(f"tr7-collector: database unavailable: {reason}{hint}", file=sys.stderr)
            return 1
        raise


def _run(args: argparse.Namespace, settings: Settings) -> int:
    if args.cmd == "serve":
        from collector.server import serve

        return serve(settings, args.listen, args.workers, args.forwarded_allow_ips)
    if args.cmd in custody.COMMANDS:
        return custody.run(args, settings)
    engine = settings.open()
    now = int(time.time())
    if args.cmd == "migrate":
        print(schema_line(settings.migrated, engine.url.render_as_string(hide_password=True)))
        return 0
    if args.cmd == "apply":
        doc = registry.read_catalog_file(args.file)
        try:
            pid, changes = db.write_tx(
                engine, lambda c: registry.apply_catalog(c, doc, retroactive=args.retroactive, now=now)
            )
        except registry.RetroactiveChange as exc:
            print(f"provider {exc.provider}: {len(exc.changes)} change(s), refused")
            for change in exc.changes:
                print(f"  {change}")
            print(f"tr7-collector: {exc}", file=sys.stderr)
            return 2
        print(f"provider {pid}: " + ("no change" if not changes else f"{len(changes)} change(s)"))
        for line in changes:
            print(f"  {line}")
        return 0
    if args.cmd == "catalog":
        from protocol.timefmt import month_of

        with db.read_conn(engine) as c:
            registry.require_known_provider(c, args.provider)
            print(json.dumps(accounting.catalog_for(c, args.provider, args.month or month_of(now))[1],
                             indent=2, sort_keys=True))
        return 0
    if args.cmd == "amend":
        from collector.amend import amend_closed

        doc = registry.read_catalog_file(args.file)
        for line in db.write_tx(engine, lambda c: amend_closed(c, args.provider, args.month, doc, now)):
            print(line)
        return 0
    if args.cmd == "agent":
        return _agent(args, engine, now)
    if args.cmd in ("user", "account"):
        from collector.accounts.cli import run_account
        from collector.web.cli import run_user

        return run_user(args, engine) if args.cmd == "user" else run_account(args, engine)
    if args.cmd == "token":
        return _token(args, engine, now)
    if args.cmd == "import":
        from collector.importfile import import_file

        return import_file(engine, args.file, args.results)
    if args.cmd == "bill":
        return _bill(args, engine)
    if args.cmd == "close":
        done = db.write_tx(
            engine, lambda conn: accounting.close(conn, settings, args.provider, args.month, args.force)
        )
        print(f"closed {args.provider} {args.month} at log size {done.size}; "
              f"total {done.billed.get('total')} {done.billed.get('currency', '')}".rstrip())
        return 0
    if args.cmd == "export":
        from audit.progress import StderrProgress
        from collector.export import export, export_archive

        # A read snapshot: the full recomputation can take a while and must not block ingest.
        if args.compress:
            path, agrees = export_archive(engine, settings, args.provider, args.month, args.out,
                                          args.overwrite, progress=StderrProgress(quiet=False))
        else:
            with db.read_conn(engine) as c:
                path, agrees = export(c, settings, args.provider, args.month, args.out, args.overwrite,
                                      progress=StderrProgress(quiet=False))
        if not agrees:
            print(
                "tr7-collector: aggregates disagree with the full recomputation; bundle holds the latter",
                file=sys.stderr,
            )
        print(path)
        return 0 if agrees else 3
    raise AssertionError(args.cmd)


def _token(args: argparse.Namespace, engine: Engine, now: int) -> int:
    if args.token_cmd == "list":
        with db.read_conn(engine) as c:
            if args.provider:
                registry.require_known_provider(c, args.provider)  # a typo: not "no tokens"
            print(json.dumps(credentials.list_api_tokens(c, args.provider), indent=2))
        return 0
    if args.token_cmd == "revoke":
        from collector.web.auth import end_sessions_of_token

        def revoke(c: Any) -> int:
            return end_sessions_of_token(c, credentials.revoke_api_token(c, args.id))

        ended = db.write_tx(engine, revoke)
        print(f"revoked token {args.id}; {ended} web session(s) opened with it ended")
        return 0
    if args.vendor and args.role is not None:
        raise registry.RegistryError("a vendor token has no role to choose: leave out --role")
    provider = None if args.vendor else args.provider
    role = "vendor" if args.vendor else args.role or "viewer"
    if provider is not None:
        _known_provider(engine, provider)
    print(db.write_tx(engine, lambda c: credentials.new_api_token(c, provider, role, now)))
    return 0


def _known_provider(engine: Engine, provider: str) -> None:
    with db.read_conn(engine) as c:
        registry.require_known_provider(c, provider)


def _agent(args: argparse.Namespace, engine: Engine, now: int) -> int:
    if args.agent_cmd == "add":
        at = args.enrolled_at if args.enrolled_at is not None else now
        kid = db.write_tx(
            engine, lambda c: credentials.add_agent(c, args.provider, args.name, args.public_key, at,
                                                 exact=args.enrolled_at is not None)
        )
        print(kid)
    elif args.agent_cmd == "revoke":
        at = db.write_tx(engine, lambda c: credentials.revoke_agent(c, args.kid, args.at, now))
        ahead = f" (its last logged heartbeat is {at - 1 - now} s ahead of now)" if at > now else ""
        print(f"revoked {args.kid} at {format_time(at)}{ahead}")
    elif args.agent_cmd == "list":
        with db.read_conn(engine) as c:
            print(json.dumps(credentials.list_agents(c, args.provider), indent=2))
    elif args.agent_cmd == "token":
        _known_provider(engine, args.provider)
        print(db.write_tx(engine, lambda c: credentials.new_enroll_token(c, args.provider, args.ttl, now)))
    return 0


def _bill(args: argparse.Namespace, engine: Engine) -> int:
    if args.format == "pdf" and args.out is None and sys.stdout.isatty():
        raise registry.RegistryError("a PDF is not for the terminal: give --out FILE (or redirect it)")
    with db.read_conn(engine) as c:
        inv = accounting.invoice(c, args.provider, args.month)
        estimate = accounting.closed(c, args.provider, args.month) is None
        latest = registry.latest_catalog(c, args.provider)
        # Names as billed in the month (a closed month's frozen catalog), then the latest catalog's
        docs = [accounting.catalog_for(c, args.provider, args.month)[1], latest[1] if latest else {}]
    names = accounting.customer_names(*docs)
    if args.format == "json":
        data = (json.dumps(inv, indent=2) + "\n").encode()
    else:
        from collector import render

        if args.format == "csv":
            data = render.csv_bytes(inv, names, estimate=estimate)
        else:
            data = render.pdf_bytes(inv, names, estimate=estimate,
                                    provider_name=(docs[0].get("provider") or {}).get("name"))
    if args.out is None:
        sys.stdout.buffer.write(data)
    else:
        args.out.write_bytes(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
