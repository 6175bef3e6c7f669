"""tr7-collector: serve, migrate, apply, agent, token, bill, close, export, import, user, account;
backup, key, accept-restore, prune and unprune (collector/custody.py)."""

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

from collector import accounting, custody, db, registry
from collector.gctune import tune_gc
from collector.settings import ENV_DATA_DIR, ENV_DB, Settings, SetupError
from collector.tlog import EvidencePruned
from protocol.errors import ProtocolError
from protocol.timefmt import format_time, parse_month, parse_time

_DURATION_RE = re.compile(r"^(\d+)([smhd]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_DURATION = 366 * 86400


def duration(text: str) -> int:
    m = _DURATION_RE.match(text.strip())
    if not m or int(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"not a duration like 24h, 30m, 7d: {text!r}")
    seconds = int(m.group(1)) * _UNITS[m.group(2)]
    if seconds > MAX_DURATION:  # the expiry must stay a database integer (and a sane one)
        raise argparse.ArgumentTypeError(f"at most 366d: {text!r}")
    return seconds


def utc_time(text: str) -> int:
    try:
        return parse_time(text)
    except ProtocolError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def month_arg(text: str) -> str:
    try:
        parse_month(text)
    except ProtocolError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return text


def _add_common(parser: argparse.ArgumentParser, default: Any) -> argparse.ArgumentParser:
    parser.add_argument(
        "--data-dir", default=default, help=f"key and default SQLite database (env {ENV_DATA_DIR})"
    )
    parser.add_argument("--db", default=default, help=f"sqlite:///PATH or postgresql://... (env {ENV_DB})")
    parser.add_argument(
        "--origin", default=default, help="collector origin (note name), fixed at first use; default host"
    )
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tr7-meter")
    except PackageNotFoundError:
        return "unknown"


def _positive(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of 1 or more")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    # The common options go before or after the command (`tr7-collector --data-dir D apply F` and
    # `tr7-collector apply --data-dir D F`). A subcommand's defaults would overwrite what the main
    # parser read, so its copies default to SUPPRESS: absent there, the main parser's value stays.
    common = _add_common(argparse.ArgumentParser(add_help=False), argparse.SUPPRESS)
    p = _add_common(argparse.ArgumentParser(prog="tr7-collector", description=__doc__), None)
    p.add_argument("--version", action="version", version=f"tr7-collector {_version()}")
    sub = p.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("serve", parents=[common], help="run the HTTP API")
    sp.add_argument(
        "--listen", default=None, help="HOST:PORT (default 127.0.0.1:8080, env TR7_COLLECTOR_LISTEN)"
    )
    sp.add_argument("--workers", type=_positive, default=1, help="uvicorn worker processes (default 1)")
    sp.add_argument(
        "--forwarded-allow-ips", default=None, metavar="ADDRESSES",
        help="comma-separated addresses or networks of the proxies whose X-Forwarded-For and "
        "X-Forwarded-Proto are trusted (default 127.0.0.1, env TR7_COLLECTOR_FORWARDED_ALLOW_IPS)",
    )
    sub.add_parser("migrate", parents=[common], help="create or upgrade the schema")
    custody.add_parsers(sub, [common])
    sp = sub.add_parser("apply", parents=[common], help="apply a provider's catalog (JSON or YAML)")
    sp.add_argument("file", type=Path)
    sp.add_argument(
        "--retroactive",
        action="store_true",
        help="a deliberate correction: accept changes that reprice hours already billed in open months",
    )
    ag = sub.add_parser("agent", help="agent keys").add_subparsers(dest="agent_cmd", required=True)
    sp = ag.add_parser("add", parents=[common], help="register an agent's public key by hand (`tr7-agent "
                       "key` prints it): sites without a network path to the collector")
    sp.add_argument("--provider", required=True)
    sp.add_argument("--name", required=True)
    sp.add_argument("--public-key", required=True, help="base64 of the raw 32-byte Ed25519 public key")
    sp.add_argument("--enrolled-at", type=utc_time, help="start of the key's window (default now): no later "
                    "than its first heartbeat")
    sp = ag.add_parser("revoke", parents=[common],
                       help="end a key's window (its later heartbeats are refused)")
    sp.add_argument("kid")
    sp.add_argument("--at", type=utc_time, help="when (default now); not before a heartbeat already logged")
    sp = ag.add_parser("list", parents=[common], help="agent keys with their windows")
    sp.add_argument("--provider")
    sp = ag.add_parser("token", parents=[common], help="one-time enrolment token")
    sp.add_argument("--provider", required=True)
    sp.add_argument("--ttl", type=duration, default=86400)
    tk = sub.add_parser("token", help="API bearer tokens").add_subparsers(dest="token_cmd", required=True)
    sp = tk.add_parser("add", parents=[common])
    who = sp.add_mutually_exclusive_group(required=True)
    who.add_argument("--provider")
    who.add_argument("--vendor", action="store_true")
    sp.add_argument("--role", choices=registry.ROLES, help="with --provider (default viewer)")
    sp = tk.add_parser("list", parents=[common], help="ids (digest prefixes), providers, roles")
    sp.add_argument("--provider")
    sp = tk.add_parser("revoke", parents=[common], help="delete a token; ends web sessions opened with it")
    sp.add_argument("id", help="its id from `token list` (at least 8 hex digits)")
    helps = {
        "bill": "the month's invoice (open month: the estimate so far), as json, csv or pdf",
        "close": "freeze the month: usage, invoice, log size and a signed checkpoint",
        "export": "the month's audit bundle (heartbeat-v1.md §6) for tr7-audit verify",
    }
    for name in ("bill", "close", "export"):
        sp = sub.add_parser(name, parents=[common], help=helps[name])
        sp.add_argument("--provider", required=True)
        sp.add_argument("--month", required=True, type=month_arg)
        if name == "bill":
            sp.add_argument("--format", choices=("json", "csv", "pdf"), default="json")
            sp.add_argument("--out", type=Path, help="a file (default: standard output; pdf: not a terminal)")
        if name == "close":
            sp.add_argument("--force", action="store_true")
        if name == "export":
            sp.add_argument("--out", type=Path, required=True,
                            help="a new or empty directory (with --compress: the archive OUT.tar.gz)")
            sp.add_argument("--overwrite", action="store_true")
            sp.add_argument("--compress", action="store_true",
                            help="write the bundle as one OUT.tar.gz (~1/40 of its size; tr7-audit "
                                 "verifies it as it is, `tar -xzf` gives the directory)")
    sp = sub.add_parser(
        "catalog", parents=[common],
        help="the catalog billing uses for a month as JSON: a closed month's as closed (or amended), "
             "else the latest (the starting point of `amend`)",
    )
    sp.add_argument("--provider", required=True)
    sp.add_argument("--month", type=month_arg, help="default: the current month")
    sp = sub.add_parser(
        "amend", parents=[common],
        help="a closed month's catalog for its late heartbeats it cannot price (only what the close "
             "did not see may change)",
    )
    sp.add_argument("--provider", required=True)
    sp.add_argument("--month", required=True, type=month_arg)
    sp.add_argument("file", type=Path)
    sp = sub.add_parser("import", parents=[common], help="ingest a file of JWS lines (tr7-agent export)")
    sp.add_argument("file", type=Path)
    sp.add_argument("--results", type=Path, metavar="OUT",
                    help="write each line's result (JSON lines: digest, seq, status, reason) for "
                         "`tr7-agent settle --results OUT` on the agent's host")
    from collector.accounts.cli import add_account_commands
    from collector.web.cli import add_user_parser

    add_user_parser(sub, [common])  # web sign-in accounts (collector/web)
    acc = sub.add_parser("account", help="customer accounts: payment failed/paid, reminders, downgrade")
    add_account_commands(acc.add_subparsers(dest="account_cmd", required=True), [common])
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    tune_gc()  # after the imports: they are frozen out of collection
    try:
        settings = Settings.resolve(args.data_dir, args.db, args.origin)
        return _run(args, settings)
    except (SetupError, registry.RegistryError, accounting.AccountingError, EvidencePruned) as exc:
        print(f"tr7-collector: {exc}", file=sys.stderr)
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
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            print(f"tr7-collector: database unavailable: {reason}", file=sys.stderr)
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
        print(f"schema up to date on {engine.url.render_as_string(hide_password=True)}")
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
        c = db.write_tx(
            engine, lambda conn: accounting.close(conn, settings, args.provider, args.month, args.force)
        )
        print(f"closed {args.provider} {args.month} at log size {c.size}; total {c.billed.get('total')} "
              f"{c.billed.get('currency', '')}".rstrip())
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


def _token(args: argparse.Namespace, engine, now: int) -> int:  # type: ignore[no-untyped-def]
    if args.token_cmd == "list":
        with db.read_conn(engine) as c:
            if args.provider:
                registry.require_known_provider(c, args.provider)  # a typo: not "no tokens"
            print(json.dumps(registry.list_api_tokens(c, args.provider), indent=2))
        return 0
    if args.token_cmd == "revoke":
        from collector.web.auth import end_sessions_of_token

        def revoke(c: Any) -> int:
            return end_sessions_of_token(c, registry.revoke_api_token(c, args.id))

        ended = db.write_tx(engine, revoke)
        print(f"revoked token {args.id}; {ended} web session(s) opened with it ended")
        return 0
    if args.vendor and args.role is not None:
        raise registry.RegistryError("a vendor token has no role to choose: leave out --role")
    provider = None if args.vendor else args.provider
    role = "vendor" if args.vendor else args.role or "viewer"
    if provider is not None:
        _known_provider(engine, provider)
    print(db.write_tx(engine, lambda c: registry.new_api_token(c, provider, role, now)))
    return 0


def _known_provider(engine, provider: str) -> None:  # type: ignore[no-untyped-def]
    with db.read_conn(engine) as c:
        registry.require_known_provider(c, provider)


def _agent(args: argparse.Namespace, engine, now: int) -> int:  # type: ignore[no-untyped-def]
    if args.agent_cmd == "add":
        at = args.enrolled_at if args.enrolled_at is not None else now
        kid = db.write_tx(
            engine, lambda c: registry.add_agent(c, args.provider, args.name, args.public_key, at,
                                                 exact=args.enrolled_at is not None)
        )
        print(kid)
    elif args.agent_cmd == "revoke":
        at = db.write_tx(engine, lambda c: registry.revoke_agent(c, args.kid, args.at, now))
        ahead = f" (its last logged heartbeat is {at - 1 - now} s ahead of now)" if at > now else ""
        print(f"revoked {args.kid} at {format_time(at)}{ahead}")
    elif args.agent_cmd == "list":
        with db.read_conn(engine) as c:
            print(json.dumps(registry.list_agents(c, args.provider), indent=2))
    elif args.agent_cmd == "token":
        _known_provider(engine, args.provider)
        print(db.write_tx(engine, lambda c: registry.new_enroll_token(c, args.provider, args.ttl, now)))
    return 0


def _bill(args: argparse.Namespace, engine) -> int:  # type: ignore[no-untyped-def]
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
