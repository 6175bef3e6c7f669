"""tr7-collector's command line: its argument types and its parser (what each command takes)."""

import argparse
import re
from pathlib import Path
from typing import Any

from collector import custody, registry
from collector.settings import ENV_DATA_DIR, ENV_DB
from protocol.errors import ProtocolError
from protocol.timefmt import parse_month, parse_time

DESCRIPTION = ("TR7 metering collector: receives the agents' signed heartbeats, keeps them as evidence in "
               "a transparency log, and bills them. `tr7-collector COMMAND --help` tells what each command "
               "takes.")
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
    p = _add_common(argparse.ArgumentParser(prog="tr7-collector", description=DESCRIPTION), None)
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
