"""Accounts in the collector's database, and the catalog overlay that makes billing follow them."""

import copy
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from collector.accounts import machine as m
from collector.accounts.address import optional_email
from collector.schema import BIG, metadata
from protocol.timefmt import format_time

accounts = sa.Table(
    "accounts",
    metadata,
    sa.Column("provider", sa.String, primary_key=True),
    sa.Column("customer", sa.String, primary_key=True),
    sa.Column("state", sa.String, nullable=False),
    sa.Column("since", sa.BigInteger, nullable=False),
    sa.Column("overdue_since", sa.BigInteger),
    sa.Column("reminders", sa.Integer, nullable=False),
    sa.Column("email", sa.String),  # where reminders go (the catalog has no address)
    sa.Column("updated_at", sa.BigInteger, nullable=False),
)

# Downgraded periods [start, end), end NULL while still downgraded: the catalog overlay's source.
account_periods = sa.Table(
    "account_periods",
    metadata,
    sa.Column("provider", sa.String, primary_key=True),
    sa.Column("customer", sa.String, primary_key=True),
    sa.Column("start", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("end", sa.BigInteger),
)

account_events = sa.Table(
    "account_events",
    metadata,
    sa.Column("id", BIG, primary_key=True, autoincrement=True),
    sa.Column("provider", sa.String, nullable=False),
    sa.Column("customer", sa.String, nullable=False),
    sa.Column("at", sa.BigInteger, nullable=False),
    sa.Column("kind", sa.String, nullable=False),  # payment_failed | reminder | downgraded | paid
    sa.Column("number", sa.Integer, nullable=False),
    sa.Column("detail", sa.Text, nullable=False),  # e.g. the mail outcome
    sa.Index("ix_account_events_pc", "provider", "customer", "at"),
)

log = logging.getLogger(__name__)
TABLES = (accounts, account_periods, account_events)
# (provider, customer, address or None, action, account) -> what happened to the mail, for the UI
Mailer = Callable[[str, str, str | None, m.Action, m.Account], str]


def _row_account(r: Any) -> m.Account:
    return m.Account(r.state, int(r.since), r.overdue_since, int(r.reminders))


def load(conn: Connection, provider: str, customer: str, lock: bool = False) -> tuple[m.Account, str | None]:
    a = accounts.c
    q = sa.select(accounts).where(a.provider == provider, a.customer == customer)
    if lock and conn.engine.dialect.name != "sqlite":
        q = q.with_for_update()  # SQLite: the write transaction already holds the database lock
    r = conn.execute(q).first()
    return (m.Account(), None) if r is None else (_row_account(r), r.email)


def _save(
    conn: Connection, provider: str, customer: str, acc: m.Account, email: str | None, now: int
) -> None:
    a = accounts.c
    values = {
        "state": acc.state,
        "since": acc.since,
        "overdue_since": acc.overdue_since,
        "reminders": acc.reminders,
        "email": email,
        "updated_at": now,
    }
    done = conn.execute(
        accounts.update().where(a.provider == provider, a.customer == customer).values(**values)
    )
    if done.rowcount == 0:
        conn.execute(accounts.insert().values(provider=provider, customer=customer, **values))


def _apply(
    conn: Connection,
    provider: str,
    customer: str,
    acc: m.Account,
    email: str | None,
    actions: list[m.Action],
    mailer: Mailer | None,
    now: int,
) -> None:
    p = account_periods.c
    for act in actions:
        detail = ""
        if act.kind == "downgraded":
            conn.execute(account_periods.insert().values(provider=provider, customer=customer, start=act.at))
        if act.kind == "paid":
            conn.execute(
                account_periods.update()
                .where(p.provider == provider, p.customer == customer, p.end.is_(None))
                .values(end=act.at)
            )
        if act.kind in ("reminder", "downgraded") and mailer is not None:
            detail = mailer(provider, customer, email, act, acc)
        conn.execute(
            account_events.insert().values(
                provider=provider,
                customer=customer,
                at=act.at,
                kind=act.kind,
                number=act.number,
                detail=detail,
            )
        )
    _save(conn, provider, customer, acc, email, now)


def payment_failed(
    conn: Connection,
    provider: str,
    customer: str,
    now: int,
    email: str | None = None,
    mailer: Mailer | None = None,
) -> m.Account:
    # Every way in (API, web form, CLI) stores the address through here: refuse a bad one before
    # anything changes. An address stored before this check is kept as it is (the mailer refuses it).
    email = optional_email(email)
    acc, old_email = load(conn, provider, customer, lock=True)
    acc, actions = m.tick(acc, now)
    acc, more = m.payment_failed(acc, now)
    _apply(conn, provider, customer, acc, email or old_email, actions + more, mailer, now)
    return acc


def paid(conn: Connection, provider: str, customer: str, now: int, mailer: Mailer | None = None) -> m.Account:
    acc, email = load(conn, provider, customer, lock=True)
    acc, actions = m.paid(acc, now)
    _apply(conn, provider, customer, acc, email, actions, mailer, now)
    return acc


def overdue(conn: Connection) -> list[tuple[str, str]]:
    """(provider, customer) of every overdue account, the ones a tick has to look at."""
    a = accounts.c
    q = sa.select(a.provider, a.customer).where(a.state == m.OVERDUE).order_by(a.provider, a.customer)
    return [(str(p), str(c)) for p, c in conn.execute(q).all()]


def tick_account(
    conn: Connection, provider: str, customer: str, now: int, mailer: Mailer | None = None
) -> list[m.Action]:
    """Run one account's state machine up to ``now`` (locked: a concurrent tick waits, then finds
    nothing left to do); returns what happened."""
    acc, email = load(conn, provider, customer, lock=True)
    acc, actions = m.tick(acc, now)
    if actions:
        _apply(conn, provider, customer, acc, email, actions, mailer, now)
    return actions


def tick_all(conn: Connection, now: int, mailer: Mailer | None = None) -> list[tuple[str, str, m.Action]]:
    """Run the state machine of every overdue account up to ``now``; returns what happened.

    Each account runs in its own SAVEPOINT: one account that fails is rolled back and logged
    alone, and every other provider's reminders and downgrades are still recorded (a failure
    used to roll the whole tick back, re-sending its mails at every tick). The server's tick
    (api.tick_once) goes further and commits each account on its own.
    """
    done = []
    for provider, customer in overdue(conn):
        try:
            with conn.begin_nested():
                actions = tick_account(conn, provider, customer, now, mailer)
        except Exception:
            if conn.invalidated or not conn.in_transaction():
                raise  # the connection itself is gone: nothing else can be recorded either
            log.exception("event=account_tick_failed provider=%s customer=%s", provider, customer)
            continue
        done += [(provider, customer, a) for a in actions]
    return done


def states(conn: Connection, provider: str) -> dict[str, tuple[m.Account, str | None]]:
    rows = conn.execute(sa.select(accounts).where(accounts.c.provider == provider))
    return {r.customer: (_row_account(r), r.email) for r in rows}


def events(conn: Connection, provider: str, customer: str, limit: int = 50) -> list[dict[str, Any]]:
    e = account_events.c
    rows = conn.execute(
        sa.select(account_events)
        .where(e.provider == provider, e.customer == customer)
        .order_by(e.at.desc(), e.id.desc())
        .limit(limit)
    )
    return [{"at": format_time(r.at), "kind": r.kind, "number": r.number, "detail": r.detail} for r in rows]


def periods(
    conn: Connection, provider: str, now: int | None = None
) -> dict[str, list[tuple[int, int | None]]]:
    """Each customer's downgraded periods as of ``now`` (default: the clock): those a tick
    recorded, and for an account still overdue past its grace period, the one the next tick will
    record, from failure + 15 days (machine.effective). Without it a month closed before that tick
    billed the hours billing-v1.md §8 says are not billed, and froze them."""
    p = account_periods.c
    out: dict[str, list[tuple[int, int | None]]] = defaultdict(list)
    for r in conn.execute(sa.select(account_periods).where(p.provider == provider).order_by(p.start)):
        if r.end is not None and int(r.end) <= int(r.start):
            # Empty: a payment recorded before its downgrade (refused since, machine.OutOfOrder);
            # kept as it was, it made every bill of the provider fail on the catalog's periods
            continue
        out[r.customer].append((int(r.start), r.end))
    now = int(time.time()) if now is None else now
    a = accounts.c
    for r in conn.execute(sa.select(accounts).where(a.provider == provider, a.state == m.OVERDUE)
                          .order_by(a.customer)):
        acc = _row_account(r)
        if m.effective(acc, now) == m.DOWNGRADED and acc.downgrade_at is not None:
            out[r.customer].append((acc.downgrade_at, None))  # as m.tick will date it
    return out


def overlay(conn: Connection, provider: str, doc: dict[str, Any], now: int | None = None) -> dict[str, Any]:
    """The catalog with the downgraded periods as of ``now`` (periods) added to its customers' lists.

    billing.load_catalog merges overlapping periods, so a period both written in the catalog and
    recorded here counts once. Customers absent from the catalog are left out (nothing to bill).
    """
    per = periods(conn, provider, now)
    if not per:
        return doc
    doc = copy.deepcopy(doc)
    for cust in doc.get("customers", []):
        extra = per.get(cust.get("id"), [])
        if extra:
            cust["downgraded"] = list(cust.get("downgraded", [])) + [
                [format_time(s), None if e is None else format_time(e)] for s, e in extra
            ]
    return doc
