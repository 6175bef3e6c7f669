"""A customer's billing e-mail is one plain address: refused with a 4xx naming the field at the API,
the web form and the CLI (through one check in the store), and never able to make the mailer raise."""

import json
import re
import smtplib
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from collector import db
from collector.accounts import machine as m
from collector.accounts import store
from collector.cli import main as collector_main
from collector.web import auth
from tests import _mailbox, _seed
from tests._mailbox import T0, Mailbox

smtp = _mailbox.smtp  # the local SMTP server fixture

CRLF = "ap@c1.example\r\nBcc: victim@evil.example"
BAD = [
    CRLF,
    "ap@c1.example\n",
    "ap@c1.example\r",
    "ap@c1.example\x00",
    "ap@c1.example\u2028Bcc: victim@evil.example",  # a Unicode line separator
    "ap@c1.example\ud800",  # a lone surrogate (JSON allows it; neither database stores it)
    "ap @c1.example",
    "ap@c1.example, victim@evil.example",
    "Victim <victim@evil.example>",
    "ap(comment)@c1.example",
    "ap@",
    "@c1.example",
    "ap",
    "a" * 244 + "@c1.example",  # 255 characters
]
GOOD = ["ap@c1.example", "a.b+billing@sub.c1.example", "ap@xn--bcher-kva.example", "a" * 243 + "@c1.example"]


@pytest.fixture(autouse=True)
def _no_background_tick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TR7_ACCOUNTS_TICK", "0")  # the tests set the time themselves


def _catalog(settings: Any) -> None:
    _seed.apply(settings, _seed.catalog())


def _stored(settings: Any) -> list[Any]:
    with db.read_conn(settings.engine) as c:
        return c.execute(sa.select(store.accounts.c.customer, store.accounts.c.email)).all()


@pytest.mark.parametrize("bad", BAD)
def test_check_email_refuses_with_the_field_named(bad: str) -> None:
    from collector.accounts.address import InvalidEmail, check_email

    with pytest.raises(InvalidEmail, match=r"^email: "):
        check_email(bad)


@pytest.mark.parametrize("good", GOOD)
def test_check_email_keeps_a_plain_address_as_it_is(good: str) -> None:
    from collector.accounts.address import check_email, optional_email

    assert check_email(good) == good and len(GOOD[-1]) == 254
    assert optional_email(None) is None and optional_email("") is None


def test_api_answers_422_and_stores_nothing(client: TestClient, settings: Any) -> None:
    _catalog(settings)
    admin = {"Authorization": f"Bearer {_seed.token(settings, 'acme', 'admin')}"}
    url = "/v1/providers/acme/customers/c1/payment-failed"
    for bad in BAD:
        # json.dumps escapes to ASCII: a lone surrogate goes over as JSON allows (httpx's json= cannot)
        body = json.dumps({"email": bad})
        r = client.post(url, content=body, headers={**admin, "Content-Type": "application/json"})
        assert r.status_code == 422, (bad, r.status_code, r.text)
        assert "email" in r.text, r.text  # the field is named
    assert _stored(settings) == []
    r = client.post(url, json={"email": "ap@c1.example"}, headers=admin)
    assert r.status_code == 200 and r.json()["email"] == "ap@c1.example"
    # Absent or empty: the address of the last failure is kept, as before, and the answers say so
    # (they said null while the reminders went to the kept address)
    paid = client.post("/v1/providers/acme/customers/c1/paid", headers=admin)
    assert paid.json()["email"] == "ap@c1.example"
    assert client.post(url, json={"email": ""}, headers=admin).json()["email"] == "ap@c1.example"
    assert client.post(url, headers=admin).json()["email"] == "ap@c1.example"
    assert _stored(settings) == [("c1", "ap@c1.example")]


def test_store_refuses_every_entry_point(settings: Any) -> None:
    from collector.accounts.address import InvalidEmail

    _catalog(settings)
    with pytest.raises(InvalidEmail, match=r"^email: "):
        db.write_tx(settings.engine, lambda c: store.payment_failed(c, "acme", "c1", T0, CRLF))
    assert _stored(settings) == []


def _login(client: TestClient, settings: Any) -> str:
    db.write_tx(
        settings.engine, lambda c: auth.add_user(c, "acme", "admin", "ann", "correct horse battery", 0)
    )
    page = client.get("/ui/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    form = {"csrf": csrf, "username": "ann", "password": "correct horse battery"}
    assert client.post("/ui/login", data=form, follow_redirects=False).status_code == 303
    html = client.get("/ui/p/acme/customers/c1").text
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)  # type: ignore[union-attr]


def test_web_form_refuses_and_says_why_on_the_page(client: TestClient, settings: Any) -> None:
    _catalog(settings)
    csrf = _login(client, settings)
    url = "/ui/p/acme/customers/c1/account"
    r = client.post(url, data={"csrf": csrf, "action": "failed", "email": CRLF}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].endswith("/customers/c1?error=email")
    page = client.get(r.headers["location"]).text
    assert 'id="form-error"' in page and "must be one address such as ap@customer.example" in page
    assert 'id="form-error"' not in client.get("/ui/p/acme/customers/c1?error=<b>anything</b>").text
    assert _stored(settings) == []
    r = client.post(
        url, data={"csrf": csrf, "action": "failed", "email": "ap@c1.example"}, follow_redirects=False
    )
    assert r.status_code == 303 and _stored(settings) == [("c1", "ap@c1.example")]


def test_cli_refuses_with_an_error_naming_the_field(settings: Any, capsys: Any) -> None:
    _catalog(settings)
    where = ["--data-dir", str(settings.data_dir), "--db", settings.db_url, "--now", "2026-10-05T00:00:00Z"]
    failed = ["account", "payment-failed", *where, "--provider", "acme", "--customer", "c1", "--email"]
    assert collector_main([*failed, CRLF]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tr7-collector: email: ") and "Traceback" not in err, err
    assert _stored(settings) == []
    assert collector_main([*failed, "ap@c1.example"]) == 0
    assert _stored(settings) == [("c1", "ap@c1.example")]


def test_mailer_never_raises_on_a_bad_address_or_header(smtp: Mailbox) -> None:
    from collector.accounts.mail import SmtpSettings, smtp_mailer

    ok = SmtpSettings.from_env()
    assert ok is not None
    acc = m.Account(m.OVERDUE, T0, T0, 1)
    act = m.Action("reminder", T0 + 3 * 86400, 1)
    detail = smtp_mailer(ok)("acme", "c1", CRLF, act, acc)
    assert detail.startswith("not sent: invalid address on the account (email: "), detail
    bad_sender = SmtpSettings(ok.host, ok.port, "billing@acme.example\r\nBcc: victim@evil.example")
    assert smtp_mailer(bad_sender)("acme", "c1", "ap@c1.example", act, acc).startswith("not sent: ValueError")
    assert smtp.messages == []  # nothing left for anyone, the victim included
    assert smtp_mailer(ok)("acme", "c1", "ap@c1.example", act, acc) == "sent to ap@c1.example"
    assert [to for to, _msg in smtp.messages] == [["ap@c1.example"]]


def test_mailer_reports_smtp_refusals(monkeypatch: pytest.MonkeyPatch) -> None:
    from collector.accounts.mail import SmtpSettings, smtp_mailer

    def refuse(*_a: Any, **_k: Any) -> Any:
        raise smtplib.SMTPConnectError(421, b"busy")

    monkeypatch.setattr(smtplib, "SMTP", refuse)
    acc, act = m.Account(m.OVERDUE, T0, T0, 1), m.Action("reminder", T0 + 3 * 86400, 1)
    assert smtp_mailer(SmtpSettings("127.0.0.1"))("acme", "c1", "ap@c1.example", act, acc).startswith(
        "not sent: SMTPConnectError"
    )


def test_a_change_dated_before_the_accounts_last_one_is_refused(settings: Any, capsys: Any) -> None:
    """`account paid --now` before the downgrade it ends (a replay in the wrong order, a clock
    stepped back) stored a downgraded period ending before it starts, and every bill of the
    provider failed on it, with no command to undo it."""
    _catalog(settings)
    where = ["--data-dir", str(settings.data_dir), "--db", settings.db_url]
    who = ["--provider", "acme", "--customer", "c1"]
    assert collector_main(["account", "payment-failed", *where, *who, "--now", "2026-11-01T00:00:00Z"]) == 0
    assert collector_main(["account", "tick", *where, "--now", "2026-11-16T00:00:00Z"]) == 0  # downgraded
    capsys.readouterr()
    assert collector_main(["account", "paid", *where, *who, "--now", "2026-11-15T00:00:00Z"]) == 1
    err = capsys.readouterr().err
    assert "downgraded since 2026-11-16T00:00:00Z" in err and "Traceback" not in err, err
    with db.read_conn(settings.engine) as c:
        periods = c.execute(sa.select(store.account_periods.c.start, store.account_periods.c.end)).all()
    assert [(p.start, p.end) for p in periods] == [(1794787200, None)]  # still open, not inverted
    assert collector_main(["bill", *where, "--provider", "acme", "--month", "2026-11"]) == 0
    assert collector_main(["account", "paid", *where, *who, "--now", "2026-11-20T00:00:00Z"]) == 0


def test_an_inverted_period_stored_before_the_refusal_is_read_as_empty(settings: Any) -> None:
    """A database that recorded such a period before the refusal bills again: the period is empty."""
    _catalog(settings)
    db.write_tx(settings.engine, lambda c: c.execute(store.account_periods.insert().values(
        provider="acme", customer="c1", start=1794787200, end=1794700800)))
    where = ["--data-dir", str(settings.data_dir), "--db", settings.db_url]
    assert collector_main(["bill", *where, "--provider", "acme", "--month", "2026-11"]) == 0
    with db.read_conn(settings.engine) as c:
        assert store.periods(c, "acme") == {}


def test_show_of_an_unknown_customer_is_an_error_not_an_active_account(settings: Any, capsys: Any) -> None:
    _catalog(settings)
    where = ["--data-dir", str(settings.data_dir), "--db", settings.db_url]
    assert collector_main(["account", "show", *where, "--provider", "acme", "--customer", "c9"]) == 1
    assert "c9" in capsys.readouterr().err
    assert collector_main(["account", "show", *where, "--provider", "acme", "--customer", "c1"]) == 0
