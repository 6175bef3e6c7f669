"""`tr7-collector user …` and `tr7-collector account …` with --now replays."""

import json
from typing import Any

import pytest

from collector import db
from collector.cli import main as collector_main
from collector.web import auth


def test_user_add_and_sign_in(
    settings: Any, tools: Any, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    where = ["--data-dir", str(settings.data_dir), "--db", settings.db_url]
    monkeypatch.setenv("TR7_WEB_PASSWORD", "long enough secret")
    typo = ["user", "add", *where, "--provider", "acmee", "--role", "auditor", "--username", "aud"]
    assert collector_main(typo) == 1 and "no provider 'acmee'" in capsys.readouterr().err  # not a new tenant
    tools.apply(settings, tools.catalog())
    add = ["user", "add", *where, "--provider", "acme", "--role", "auditor", "--username", "aud"]
    assert collector_main(add) == 0
    assert collector_main(add) == 1 and "user aud exists" in capsys.readouterr().err
    vendor_with_provider = [
        "user",
        "add",
        *where,
        "--provider",
        "acme",
        "--role",
        "vendor",
        "--username",
        "x",
    ]
    assert collector_main(vendor_with_provider) == 1
    assert "vendor role has no provider" in capsys.readouterr().err
    assert collector_main(["user", "add", *where, "--vendor", "--role", "vendor", "--username", "ven"]) == 0
    capsys.readouterr()
    assert collector_main(["user", "list", *where]) == 0
    assert capsys.readouterr().out.splitlines() == ["aud\tacme\tauditor", "ven\t(vendor)\tvendor"]
    with db.read_conn(settings.engine) as c:
        scope, who = auth.authenticate(c, "aud", "long enough secret", "")  # type: ignore[misc]
        assert (scope.provider, scope.role, who) == ("acme", "auditor", "aud")
        assert auth.authenticate(c, "aud", "wrong", "") is None
        stored = c.execute(auth.sa.select(auth.web_users.c.password)).scalars().all()
    assert all(x.startswith("scrypt$16384$8$1$") and "long enough" not in x for x in stored)


def test_accounts_replay(settings: Any, tools: Any, capsys: Any) -> None:
    tools.apply(settings, tools.catalog())
    where = ["--data-dir", str(settings.data_dir), "--db", settings.db_url]
    failed = [
        "account",
        "payment-failed",
        *where,
        "--now",
        "2026-10-05T00:00:00Z",
        "--provider",
        "acme",
        "--customer",
        "c1",
        "--email",
        "ap@c1.example",
    ]
    assert collector_main(failed) == 0
    assert json.loads(capsys.readouterr().out)["downgrade_at"] == "2026-10-20T00:00:00Z"
    assert collector_main(["account", "tick", *where, "--now", "2026-10-20T00:00:00Z"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "acme/c1: downgraded"
    ]  # a first tick at day 15: no stale reminders
    show = ["show", *where, "--now", "2026-10-21T00:00:00Z", "--provider", "acme", "--customer", "c1"]
    assert collector_main(["account", *show]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["state"] == "downgraded" and shown["reminders"] == 0  # none was sent
    assert collector_main(["account", "paid", *where, "--provider", "acme", "--customer", "nobody"]) == 1
    assert "no customer nobody" in capsys.readouterr().err


def test_user_passwd_and_remove_end_the_users_sessions(
    settings: Any, tools: Any, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """A leaked password or a departed user: a new password, or no account, and no session left."""
    tools.apply(settings, tools.catalog())
    where = ["--data-dir", str(settings.data_dir), "--db", settings.db_url]
    monkeypatch.setenv("TR7_WEB_PASSWORD", "long enough secret")
    assert collector_main(["user", "add", *where, "--provider", "acme", "--role", "admin", "--username",
                           "ann"]) == 0

    def session() -> str:
        with db.read_conn(settings.engine) as c:
            scope, who = auth.authenticate(c, "ann", "long enough secret", "")  # type: ignore[misc]
        return db.write_tx(settings.engine, lambda c: auth.open_session(c, scope, who, 0))

    sid = session()
    monkeypatch.setenv("TR7_WEB_PASSWORD", "another long secret")
    assert collector_main(["user", "passwd", *where, "--username", "ann"]) == 0
    assert "1 session(s) ended" in capsys.readouterr().out
    with db.read_conn(settings.engine) as c:
        assert auth.authenticate(c, "ann", "long enough secret", "") is None
        assert auth.authenticate(c, "ann", "another long secret", "") is not None
        assert c.execute(auth.sa.select(auth.web_sessions).where(
            auth.web_sessions.c.digest == auth.registry.digest(sid))).first() is None
    with db.read_conn(settings.engine) as c:
        scope, who = auth.authenticate(c, "ann", "another long secret", "")  # type: ignore[misc]
    db.write_tx(settings.engine, lambda c: auth.open_session(c, scope, who, 0))
    assert collector_main(["user", "remove", *where, "--username", "ann"]) == 0
    assert "1 session(s) ended" in capsys.readouterr().out
    with db.read_conn(settings.engine) as c:
        assert auth.authenticate(c, "ann", "another long secret", "") is None
        assert c.execute(auth.sa.select(auth.web_sessions)).first() is None
    assert collector_main(["user", "remove", *where, "--username", "ann"]) == 1
    assert "no user ann" in capsys.readouterr().err
