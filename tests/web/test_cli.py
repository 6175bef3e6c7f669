"""The package CLIs: web users, and account events replayed with an explicit --now."""

import json
from pathlib import Path
from typing import Any

import pytest

from collector import db
from collector.accounts.__main__ import main as accounts_main
from collector.web import auth
from collector.web.__main__ import main as web_main


def test_user_add_and_sign_in(settings: Any, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    base = ["--data-dir", str(settings.data_dir), "--db", settings.db_url]
    monkeypatch.setenv("TR7_WEB_PASSWORD", "long enough secret")
    assert (
        web_main([*base, "user", "add", "--provider", "acme", "--role", "auditor", "--username", "aud"]) == 0
    )
    assert web_main([*base, "user", "add", "--provider", "acme", "--role", "vendor", "--username", "x"]) == 1
    assert "vendor role has no provider" in capsys.readouterr().err
    with db.read_conn(settings.engine) as c:
        scope, who = auth.authenticate(c, "aud", "long enough secret", "")  # type: ignore[misc]
        assert (scope.provider, scope.role, who) == ("acme", "auditor", "aud")
        assert auth.authenticate(c, "aud", "wrong", "") is None
        stored = c.execute(auth.sa.select(auth.web_users.c.password)).scalar_one()
    assert stored.startswith("scrypt$16384$8$1$") and "long enough" not in stored


def test_accounts_replay(settings: Any, tools: Any, capsys: Any, tmp_path: Path) -> None:
    tools.apply(settings, tools.catalog())
    base = ["--data-dir", str(settings.data_dir), "--db", settings.db_url]
    assert (
        accounts_main(
            [
                *base,
                "--now",
                "2026-10-05T00:00:00Z",
                "payment-failed",
                "--provider",
                "acme",
                "--customer",
                "c1",
                "--email",
                "ap@c1.example",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["downgrade_at"] == "2026-10-20T00:00:00Z"
    assert accounts_main([*base, "--now", "2026-10-20T00:00:00Z", "tick"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "acme/c1: downgraded"
    ]  # a first tick at day 15: no stale reminders
    assert (
        accounts_main(
            [*base, "--now", "2026-10-21T00:00:00Z", "show", "--provider", "acme", "--customer", "c1"]
        )
        == 0
    )
    shown = json.loads(capsys.readouterr().out)
    assert shown["state"] == "downgraded" and shown["reminders"] == 4
    assert accounts_main([*base, "paid", "--provider", "acme", "--customer", "nobody"]) == 1
