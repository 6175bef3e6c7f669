"""`tr7-collector user add|list|passwd|remove`: web sign-in accounts."""

import argparse
import getpass
import os
import sys
import time
from typing import Any

import sqlalchemy as sa

from collector import db, registry
from collector.web import auth
from collector.web.tables import web_users


def add_user_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """The `user` command, for tr7-collector's parser and this module's own."""
    user = sub.add_parser("user", help="web sign-in accounts").add_subparsers(dest="user_cmd", required=True)
    add = user.add_parser(
        "add", parents=parents, help="password from $TR7_WEB_PASSWORD, else asked on the terminal"
    )
    who = add.add_mutually_exclusive_group(required=True)
    who.add_argument("--provider")
    who.add_argument("--vendor", action="store_true")
    add.add_argument("--role", choices=auth.ROLES, required=True)
    add.add_argument("--username", required=True)
    user.add_parser("list", parents=parents)
    passwd = user.add_parser(
        "passwd", parents=parents, help="new password ($TR7_WEB_PASSWORD or asked); ends the user's sessions"
    )
    passwd.add_argument("--username", required=True)
    remove = user.add_parser("remove", parents=parents, help="delete the account and end its sessions")
    remove.add_argument("--username", required=True)


def _password(username: str) -> str:
    given = os.environ.get("TR7_WEB_PASSWORD")
    if given:
        return given
    if not sys.stdin.isatty():
        raise registry.RegistryError("no password: set TR7_WEB_PASSWORD, or run the command on a terminal")
    return getpass.getpass(f"password for {username}: ")


def run_user(args: argparse.Namespace, engine: Any) -> int:
    """Raises registry.RegistryError for a refused user (tr7-collector prints it)."""
    if args.user_cmd == "list":
        with db.read_conn(engine) as c:
            for r in c.execute(sa.select(web_users).order_by(web_users.c.username)):
                print(f"{r.username}\t{r.provider or '(vendor)'}\t{r.role}")
        return 0
    if args.user_cmd == "remove":
        ended = db.write_tx(engine, lambda c: auth.remove_user(c, args.username))
        print(f"user {args.username} removed ({ended} session(s) ended)")
        return 0
    password = _password(args.username)
    if args.user_cmd == "passwd":
        ended = db.write_tx(engine, lambda c: auth.set_password(c, args.username, password))
        print(f"password of {args.username} changed ({ended} session(s) ended)")
        return 0
    provider = None if args.vendor else args.provider
    db.write_tx(
        engine, lambda c: auth.add_user(c, provider, args.role, args.username, password, int(time.time()))
    )
    print(f"user {args.username} added ({args.role}{' of ' + provider if provider else ''})")
    return 0
