"""Account routes (payment failed / paid / state), the entitlement API and the periodic tick."""

import logging
import os
import time
from collections import OrderedDict
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, FastAPI, HTTPException, Request
from pydantic import BaseModel, field_validator
from sqlalchemy.engine import Connection

from billing import load_catalog
from collector import apidoc, db, periodic, registry
from collector import schema as s
from collector.accounts import address, entitlement, mail, store
from collector.accounts import machine as m
from collector.readapi import Scope, ScopeDep
from protocol.timefmt import format_time

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1")
ENV_TICK = "TR7_ACCOUNTS_TICK"  # seconds between ticks in the server; 0 turns the job off


class FailureRequest(BaseModel):
    email: str | None = None  # where the reminders go; kept from the last failure when absent

    @field_validator("email")
    @classmethod
    def _one_address(cls, v: str | None) -> str | None:
        # A 422 naming body.email before any transaction; the store checks again for the web and CLI.
        return address.optional_email(v)


def mailer() -> store.Mailer:
    return mail.smtp_mailer(mail.SmtpSettings.from_env())


def account_json(acc: m.Account, email: str | None, now: int) -> dict[str, Any]:
    """The account as it is at ``now``: a grace period that ran out before any tick recorded it
    reads as downgraded since its end, with no downgrade or reminder still to come (the stored
    row's "downgrade at" and "next reminder" were shown, both already past)."""
    state, since = m.effective_since(acc, now)
    nxt = acc.next_reminder_at() if state == m.OVERDUE else None
    return {
        "state": state,
        "since": format_time(since) if since else None,
        "overdue_since": None if acc.overdue_since is None else format_time(acc.overdue_since),
        "downgrade_at": None
        if acc.downgrade_at is None or state != m.OVERDUE
        else format_time(acc.downgrade_at),
        "next_reminder_at": None if nxt is None else format_time(nxt),
        "reminders": acc.reminders,
        "email": email,
    }


def require_customer(c: Any, provider: str, customer: str) -> None:
    """The customer is in the latest catalog, or has an account already: a customer dropped from
    the catalog while overdue can still pay (its overdue alert would otherwise never clear)."""
    latest = registry.latest_catalog(c, provider)
    if latest is not None and customer in {x["id"] for x in latest[1].get("customers", [])}:
        return
    if customer not in store.states(c, provider):
        raise HTTPException(404, f"no customer {customer} in the catalog of {provider}")


def require_admin(scope: Scope, provider: str) -> None:
    if scope.vendor or scope.role != "admin":
        raise HTTPException(403, "recording payments needs a provider admin")
    scope.require_provider(provider)


def record(engine: Any, provider: str, customer: str, kind: str, email: str | None,
           now: int) -> tuple[m.Account, str | None]:
    """The account after the payment event, and the reminder address it holds (one given now, or
    kept from an earlier failure: the answer said null while reminders went to the kept one)."""
    def tx(c: Any) -> tuple[m.Account, str | None]:
        require_customer(c, provider, customer)
        if kind == "failed":
            acc = store.payment_failed(c, provider, customer, now, email, mailer())
        else:
            acc = store.paid(c, provider, customer, now, mailer())
        return acc, store.load(c, provider, customer)[1]

    try:
        return db.write_tx(engine, tx)
    except address.InvalidEmail as exc:  # refused by the store: nothing was recorded
        raise HTTPException(422, str(exc)) from exc
    except m.OutOfOrder as exc:  # dated before the account's last change: nothing was recorded
        raise HTTPException(409, str(exc)) from exc


_ACCOUNT_ERRORS = {**apidoc.AUTH_ERRORS, 404: "no such customer in the provider's catalog or accounts"}
_RECORD_ERRORS = apidoc.errors({
    **_ACCOUNT_ERRORS, 403: "only the provider's admin token records payments",
    409: "dated before the account's last change: nothing was recorded",
    413: "a body over 1 MiB",
    422: "a malformed body or e-mail address: nothing was recorded",
})


@router.post("/providers/{provider}/customers/{customer:path}/payment-failed", responses=_RECORD_ERRORS)
def payment_failed(
    provider: str, customer: str, request: Request, scope: ScopeDep, body: FailureRequest | None = None
) -> dict[str, Any]:
    require_admin(scope, provider)
    now = int(time.time())
    given = body.email if body else None
    acc, email = record(request.app.state.engine, provider, customer, "failed", given, now)
    return {"provider": provider, "customer": customer, **account_json(acc, email, now)}


@router.post("/providers/{provider}/customers/{customer:path}/paid", responses=_RECORD_ERRORS)
def paid(provider: str, customer: str, request: Request, scope: ScopeDep) -> dict[str, Any]:
    require_admin(scope, provider)
    now = int(time.time())
    acc, email = record(request.app.state.engine, provider, customer, "paid", None, now)
    return {"provider": provider, "customer": customer, **account_json(acc, email, now)}


@router.get("/providers/{provider}/customers/{customer:path}/account",
            responses=apidoc.errors(_ACCOUNT_ERRORS))
def account(provider: str, customer: str, request: Request, scope: ScopeDep) -> dict[str, Any]:
    scope.require_provider(provider)
    now = int(time.time())
    with db.read_conn(request.app.state.engine) as c:
        require_customer(c, provider, customer)
        acc, email = store.load(c, provider, customer)
        events = store.events(c, provider, customer)
    return {"provider": provider, "customer": customer, **account_json(acc, email, now), "events": events}


_loaded: "OrderedDict[tuple[str, int], Any]" = OrderedDict()  # parsed catalogs by (database, id)


def _catalog(c: Any, provider: str) -> Any:
    """The provider's latest catalog, validated once per catalog version (appliances ask often)."""
    cid = c.execute(sa.select(sa.func.max(s.catalogs.c.id)).where(s.catalogs.c.provider == provider)).scalar()
    if cid is None:
        return None
    key = (c.engine.url.render_as_string(hide_password=True), int(cid))
    if key not in _loaded:
        _loaded[key] = load_catalog(registry.catalog_by_id(c, int(cid)))
        while len(_loaded) > 32:
            _loaded.popitem(last=False)
    return _loaded[key]


@router.get("/entitlements/{instance}", responses=apidoc.errors(apidoc.AUTH_ERRORS))
def entitlements(instance: str, request: Request, scope: ScopeDep) -> dict[str, Any]:
    """Any API token: a provider's token answers from its own catalog only, so an instance of
    another provider reads as `no_license` and nothing leaks across tenants."""
    now = int(time.time())
    with db.read_conn(request.app.state.engine) as c:
        pids = (
            c.execute(sa.select(s.providers.c.id).where(scope.provider_filter(s.providers.c.id)))
            .scalars()
            .all()
        )
        cats, accs = [], {}
        for p in pids:
            cat = _catalog(c, p)
            if cat is not None and any(lic.instance == instance for lic in cat.licenses):
                cats.append(cat)
                accs.update({(p, cust): a for cust, (a, _e) in store.states(c, p).items()})
    answer = entitlement.decide(instance, cats, accs, now)
    return entitlement.for_vendor(answer) if scope.vendor else answer


def tick_once(
    engine: Any, now: int | None = None, failed: list[tuple[str, str, str]] | None = None
) -> list[tuple[str, str, m.Action]]:
    """Tick every overdue account, each in its own write transaction.

    One account that fails is logged (and added to ``failed`` as provider, customer, error) and
    left for the next tick; the others are committed anyway. Committing account by account also
    means the mails of an account that went through are never sent again because another
    account failed later in the same tick.
    """
    now = int(time.time()) if now is None else now
    send = mailer()
    with db.read_conn(engine) as c:
        keys = store.overdue(c)
    done: list[tuple[str, str, m.Action]] = []
    for provider, customer in keys:
        # a def, not a lambda: mypy infers no type for a lambda whose defaults take the loop's values
        def tick(c: Connection, p: str = provider, cu: str = customer) -> list[m.Action]:
            return store.tick_account(c, p, cu, now, send)

        try:
            actions = db.write_tx(engine, tick)
        except Exception as exc:
            log.exception("event=account_tick_failed provider=%s customer=%s", provider, customer)
            if failed is not None:
                failed.append((provider, customer, f"{type(exc).__name__}: {exc}"))
            continue
        done += [(provider, customer, a) for a in actions]
    return done


def tick_seconds() -> int:
    """TR7_ACCOUNTS_TICK, checked by `serve` before any worker starts (SetupError: one line)."""
    from collector.settings import SetupError

    text = os.environ.get(ENV_TICK, "300") or "0"
    if not text.strip().isdigit():
        raise SetupError(f"{ENV_TICK}={text!r} must be a number of seconds (0: no tick)")
    return int(text)


def install_tick(app: FastAPI) -> None:
    """Run the tick every TR7_ACCOUNTS_TICK seconds (default 300) while the server runs."""
    every = tick_seconds()
    if every > 0:
        # tick_once logs each account that fails; a failure of the tick itself is logged by
        # run_every, and the tick runs again at its next turn
        periodic.run_every(app, every, lambda: tick_once(app.state.engine), "accounts_tick")
