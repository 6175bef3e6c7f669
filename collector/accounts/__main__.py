"""python -m collector.accounts tick|payment-failed|paid|show, with an explicit --now for replays."""

import argparse
import json
import sys
import time

from collector import db, registry
from collector.accounts import api, store
from collector.cli import utc_time
from collector.settings import Settings, SetupError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m collector.accounts", description=__doc__)
    p.add_argument("--data-dir")
    p.add_argument("--db")
    p.add_argument("--now", type=utc_time, help="RFC 3339 UTC time to act at (default: the clock)")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("tick", help="send due reminders and downgrade accounts past their grace period")
    for name in ("payment-failed", "paid", "show"):
        sp = sub.add_parser(name)
        sp.add_argument("--provider", required=True)
        sp.add_argument("--customer", required=True)
        if name == "payment-failed":
            sp.add_argument("--email", help="where the reminders go")
    args = p.parse_args(argv)
    now = int(time.time()) if args.now is None else args.now
    try:
        engine = Settings.resolve(args.data_dir, args.db).open()
        if args.cmd == "tick":
            for provider, customer, act in api.tick_once(engine, now):
                print(f"{provider}/{customer}: {act.kind} {act.number or ''}".rstrip())
            return 0
        if args.cmd in ("payment-failed", "paid"):
            kind = "failed" if args.cmd == "payment-failed" else "paid"
            api.record(engine, args.provider, args.customer, kind, getattr(args, "email", None), now)
        with db.read_conn(engine) as c:
            acc, email = store.load(c, args.provider, args.customer)
            out = {
                **api.account_json(acc, email, now),
                "events": store.events(c, args.provider, args.customer),
            }
        print(json.dumps(out, indent=2))
        return 0
    except (SetupError, registry.RegistryError) as exc:
        print(f"collector.accounts: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        from fastapi import HTTPException

        if isinstance(exc, HTTPException):  # e.g. an unknown customer
            print(f"collector.accounts: {exc.detail}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
