"""Sign-in throttling: failures per address and per (address, user name), one scrypt per attempt."""

import hashlib
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from fastapi.testclient import TestClient

from collector import db
from collector.web import auth, throttle
from tests.web.test_pages import PASSWORD, login  # noqa: F401

T0 = 1_000_000.0


def test_counters_per_name_and_per_address_over_a_window() -> None:
    th = throttle.SignInThrottle(checks=1)
    for i in range(throttle.PER_NAME):
        assert th.attempt("10.0.0.1", "ann", T0 + i) == 0  # counted as failures until succeeded
    assert th.attempt("10.0.0.1", "ann", T0 + 10) == throttle.WINDOW - 10 + 1  # until the first expires
    assert th.attempt("10.0.0.2", "ann", T0 + 10) == 0  # another address: its own count
    assert th.attempt("10.0.0.1", "bob", T0 + 10) == 0  # another name: the address's count only
    assert th.attempt("10.0.0.1", "ann", T0 + throttle.WINDOW + 1) == 0  # the window passed
    for i in range(throttle.PER_ADDRESS):  # one guess per name, from one address
        assert th.attempt("10.0.0.3", f"guess-{i}", T0 + 20) == 0
    assert th.attempt("10.0.0.3", "carol", T0 + 30) > 0  # the address used its allowance
    fresh = throttle.SignInThrottle(checks=1)
    for _ in range(throttle.PER_NAME - 1):
        fresh.attempt("a", "ann", T0)
    assert fresh.attempt("a", "ann", T0) == 0
    fresh.succeeded("a", "ann")  # a success clears that name's count
    assert fresh.attempt("a", "ann", T0) == 0


def test_an_attempt_refused_for_busy_checks_keeps_the_names_earlier_failures() -> None:
    """Busy: taken back, not a success; clearing the name's count let its failures be wiped by
    filling the password checks from other addresses."""
    th = throttle.SignInThrottle(checks=1)
    for _ in range(throttle.PER_NAME - 1):
        th.attempt("a", "ann", T0)  # wrong passwords
    assert th.attempt("a", "ann", T0) == 0  # this one finds every check busy
    th.not_checked("a", "ann")
    assert th.attempt("a", "ann", T0) == 0  # the last of the allowance, as before the busy one
    assert th.attempt("a", "ann", T0) > 0


def test_a_burst_of_concurrent_attempts_gets_the_allowance_only() -> None:
    """Counted before the password check: concurrent wrong passwords all passed a check made
    before any of them was counted (40 checked for one name instead of 5)."""
    th = throttle.SignInThrottle(checks=1)
    with ThreadPoolExecutor(16) as pool:
        waits = list(pool.map(lambda _: th.attempt("10.0.0.9", "ann", T0), range(64)))
    assert waits.count(0) == throttle.PER_NAME


def test_concurrent_checks_are_capped() -> None:
    th = throttle.SignInThrottle(checks=1)
    th_wait, throttle.CHECK_WAIT = throttle.CHECK_WAIT, 0.01
    try:
        with th.checking(), pytest.raises(throttle.Busy), th.checking():
            pass
    finally:
        throttle.CHECK_WAIT = th_wait


def test_repeated_wrong_passwords_are_refused_with_retry_after(
    client: TestClient, settings: Any
) -> None:
    db.write_tx(settings.engine, lambda c: auth.add_user(c, None, "vendor", "ven", PASSWORD, 0))

    def attempt(password: str) -> Any:
        page = client.get("/ui/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
        return client.post("/ui/login", data={"csrf": csrf, "username": "ven", "password": password},
                           follow_redirects=False)

    for _ in range(throttle.PER_NAME):
        assert attempt("wrong password").status_code == 401
    refused = attempt(PASSWORD)  # even the right one, until the window passes
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) > 0
    assert "Too many failed sign-ins" in refused.text


def test_an_unknown_name_costs_one_password_check_as_a_known_one(settings: Any, monkeypatch: Any) -> None:
    db.write_tx(settings.engine, lambda c: auth.add_user(c, None, "vendor", "ven", PASSWORD, 0))
    auth._equaliser()  # made once, at the first unknown name
    calls = []
    real = hashlib.scrypt
    monkeypatch.setattr(hashlib, "scrypt", lambda *a, **k: calls.append(1) or real(*a, **k))
    with db.read_conn(settings.engine) as c:
        assert auth.authenticate(c, "ven", "wrong password", "") is None
        known = len(calls)
        assert auth.authenticate(c, "nobody", "wrong password", "") is None
    assert known == 1 and len(calls) - known == 1
