"""`tr7-collector account tick|payment-failed|paid|show`: customer accounts (billing-v1.md §8).

Every command takes --now (RFC 3339 UTC) to act at an explicit time, for replays and tests.
"""

import argparse
import json
import sys
import time
from typing import Any

from fastapi import HTTPException

from collector import db, registry
from collector.accounts import api, store
from protocol.errors import ProtocolError
from protocol.timefmt import parse_time


def _utc(text: str) -> int:
    try:
        return parse_time(text)
    except ProtocolError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def add_account_commands(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """tick / payment-failed / paid / show on a subparsers object (dest `account_cmd`)."""
    now = argparse.ArgumentParser(add_help=False)
    now.add_argument("--now", type=_utc, help="RFC 3339 UTC time to act at (default: the clock)")
    sub.add_parser("tick", parents=[*parents, now], help="due reminders; downgrades past the grace period")
    for name in ("payment-failed", "paid", "show"):
        sp = sub.add_parser(name, parents=[*parents, now])
        sp.add_argument("--provider", required=True)
        sp.add_argument("--customer", required=True)
        if name == "payment-failed":
            sp.add_argument("--email", help="where the reminders go")


def run_account(args: argparse.Namespace, engine: Any) -> int:
    now = int(time.time()) if args.now is None else args.now
    if args.account_cmd == "tick":
        failed: list[tuple[str, str, str]] = []
        for provider, customer, act in api.tick_once(engine, now, failed):
            print(f"{provider}/{customer}: {act.kind} {act.number or ''}".rstrip())
        for provider, customer, error in failed:  # the others were recorded; exit 1 for cron
            print(f"tr7-collector: {provider}/{customer}: tick failed: {error}", file=sys.stderr)
        return 1 if failed else 0
    if args.account_cmd in ("payment-failed", "paid"):
        kind = "failed" if args.account_cmd == "payment-failed" else "paid"
        try:
            api.record(engine, args.provider, args.customer, kind, getattr(args, "email", None), now)
        except HTTPException as exc:  # e.g. a customer not in the catalog
            raise registry.RegistryError(str(exc.detail)) from exc
    with db.read_conn(engine) as c:
        try:  # a mistyped customer or provider read as an account in good standing
            api.require_customer(c, args.provider, args.customer)
        except HTTPException as exc:
            raise registry.RegistryError(str(exc.detail)) from exc
        acc, email = store.load(c, args.provider, args.customer)
        out = {**api.account_json(acc, email, now), "events": store.events(c, args.provider, args.customer)}
    print(json.dumps(out, indent=2))
    return 0
