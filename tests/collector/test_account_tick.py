"""The account tick: one account that fails (a stored address with CR/LF, a mailer that raises)
cannot hold back the other providers' reminders and downgrades, nor make their mails go out twice."""

import logging
import time
import types
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from collector import db
from collector.accounts import api, store
from collector.accounts import machine as m
from collector.accounts.mail import SmtpSettings, smtp_mailer
from collector.cli import main as collector_main
from tests import _mailbox, _seed
from tests._mailbox import DAY, T0, Mailbox

smtp = _mailbox.smtp  # the local SMTP server fixture

CRLF = "ap@c1.example\r\nBcc: victim@evil.example"


@pytest.fixture(autouse=True)
def _no_background_tick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TR7_ACCOUNTS_TICK", "0")  # the tests set the time themselves


def _two_providers(settings: Any, acme_email: str | None = CRLF) -> None:
    """acme/c1 and beta/b1 overdue since T0. acme's address was stored before addresses were
    checked (written here behind the store's back, as an old database holds it)."""
    _seed.apply(settings, _seed.catalog())
    _seed.apply(settings, _seed.catalog("beta", ["b1"], licenses=[]))

    def seed(c: Any) -> None:
        store.payment_failed(c, "beta", "b1", T0, "ap@b1.example")
        store.payment_failed(c, "acme", "c1", T0)
        c.execute(store.accounts.update().where(store.accounts.c.provider == "acme").values(email=acme_email))

    db.write_tx(settings.engine, seed)


def _state(settings: Any) -> tuple[list[Any], list[Any]]:
    with db.read_conn(settings.engine) as c:
        a, p = store.accounts.c, store.account_periods.c
        accs = c.execute(sa.select(a.provider, a.customer, a.state).order_by(a.provider)).all()
        pers = c.execute(sa.select(p.provider, p.customer, p.start).order_by(p.provider)).all()
    return [tuple(x) for x in accs], [tuple(x) for x in pers]


def _failing_for(provider: str) -> store.Mailer:
    """The real mailer, except that it raises for one provider (an unforeseen bug, say)."""
    real = smtp_mailer(SmtpSettings.from_env())

    def send(p: str, c: str, to: str | None, act: m.Action, acc: m.Account) -> str:
        if p == provider:
            raise RuntimeError(f"mailer broke on {p}/{c}")
        return real(p, c, to, act, acc)

    return send


def test_a_stored_crlf_address_no_longer_blocks_the_tick(settings: Any, smtp: Mailbox) -> None:
    _two_providers(settings)
    for k in range(3):  # three ticks, 300 s apart, after the grace period
        api.tick_once(settings.engine, T0 + 16 * DAY + k * 300)
    downgraded_at = T0 + 15 * DAY
    assert _state(settings) == (
        [("acme", "c1", "downgraded"), ("beta", "b1", "downgraded")],
        [("acme", "c1", downgraded_at), ("beta", "b1", downgraded_at)],
    )
    assert [to for to, _msg in smtp.messages] == [["ap@b1.example"]]  # sent once, nothing to the Bcc
    with db.read_conn(settings.engine) as c:
        events = store.events(c, "acme", "c1")
    assert events[0]["kind"] == "downgraded"
    assert events[0]["detail"].startswith("not sent: invalid address on the account (email: ")


def test_paid_on_an_account_with_a_stored_crlf_address(
    client: TestClient, settings: Any, smtp: Mailbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    _two_providers(settings)
    admin = {"Authorization": f"Bearer {_seed.token(settings, 'acme', 'admin')}"}
    monkeypatch.setattr(api, "time", types.SimpleNamespace(time=lambda: T0 + 4 * DAY))  # reminder 1 due
    r = client.post("/v1/providers/acme/customers/c1/paid", headers=admin)
    assert r.status_code == 200 and r.json()["state"] == "active", r.text
    with db.read_conn(settings.engine) as c:
        kinds = [(e["kind"], e["detail"][:40]) for e in store.events(c, "acme", "c1")]
    assert kinds == [
        ("paid", ""),
        ("reminder", "not sent: invalid address on the account"),
        ("payment_failed", ""),
    ]
    assert smtp.messages == []


def test_tick_once_commits_each_account_alone(
    settings: Any, smtp: Mailbox, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    _two_providers(settings, acme_email="ap@c1.example")
    monkeypatch.setattr(api, "mailer", lambda: _failing_for("acme"))
    failed: list[tuple[str, str, str]] = []
    with caplog.at_level(logging.ERROR):
        done = api.tick_once(settings.engine, T0 + 16 * DAY, failed)
    assert [(p, c, a.kind) for p, c, a in done] == [("beta", "b1", "downgraded")]
    assert failed == [("acme", "c1", "RuntimeError: mailer broke on acme/c1")]
    assert any(
        "event=account_tick_failed provider=acme customer=c1" in r.getMessage() for r in caplog.records
    )
    # acme is untouched (its period insert rolled back with it), beta is recorded and mailed.
    assert _state(settings) == (
        [("acme", "c1", "overdue"), ("beta", "b1", "downgraded")],
        [("beta", "b1", T0 + 15 * DAY)],
    )
    assert [to for to, _msg in smtp.messages] == [["ap@b1.example"]]
    monkeypatch.setattr(api, "mailer", lambda: smtp_mailer(SmtpSettings.from_env()))
    done = api.tick_once(settings.engine, T0 + 16 * DAY + 300)  # the next tick: acme only
    assert [(p, c, a.kind) for p, c, a in done] == [("acme", "c1", "downgraded")]
    assert [to for to, _msg in smtp.messages] == [["ap@b1.example"], ["ap@c1.example"]]
    assert api.tick_once(settings.engine, T0 + 16 * DAY + 600) == []  # nothing twice


def test_tick_all_rolls_back_one_account_to_its_savepoint(settings: Any, smtp: Mailbox, caplog: Any) -> None:
    _two_providers(settings, acme_email="ap@c1.example")
    mailer = _failing_for("acme")
    with caplog.at_level(logging.ERROR):
        done = db.write_tx(settings.engine, lambda c: store.tick_all(c, T0 + 16 * DAY, mailer))
    assert [(p, c, a.kind) for p, c, a in done] == [("beta", "b1", "downgraded")]
    assert "provider=acme customer=c1" in caplog.text
    assert _state(settings) == (
        [("acme", "c1", "overdue"), ("beta", "b1", "downgraded")],
        [("beta", "b1", T0 + 15 * DAY)],
    )
    with db.read_conn(settings.engine) as c:
        assert [e["kind"] for e in store.events(c, "acme", "c1")] == ["payment_failed"]


def test_cli_tick_reports_the_failed_account_and_records_the_others(
    settings: Any, smtp: Mailbox, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    _two_providers(settings, acme_email="ap@c1.example")
    monkeypatch.setattr(api, "mailer", lambda: _failing_for("acme"))
    where = ["--data-dir", str(settings.data_dir), "--db", settings.db_url, "--now", "2026-10-21T00:00:00Z"]
    assert collector_main(["account", "tick", *where]) == 1
    out, err = capsys.readouterr()
    assert out.splitlines() == ["beta/b1: downgraded"]
    assert "tr7-collector: acme/c1: tick failed: RuntimeError: mailer broke on acme/c1" in err
    assert _state(settings)[0] == [("acme", "c1", "overdue"), ("beta", "b1", "downgraded")]


def test_the_server_tick_survives_a_bad_account(settings: Any, smtp: Mailbox) -> None:
    """The loop of install_tick, on the wall clock: a stored CR/LF address no longer fails it."""
    _two_providers(settings)
    now = int(time.time())
    db.write_tx(
        settings.engine, lambda c: c.execute(store.accounts.update().values(overdue_since=now - 16 * DAY))
    )
    api.tick_once(settings.engine)
    assert _state(settings)[0] == [("acme", "c1", "downgraded"), ("beta", "b1", "downgraded")]
    assert [to for to, _msg in smtp.messages] == [["ap@b1.example"]]
