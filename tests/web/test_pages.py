"""Pages in-process: sign-in, cookie flags, CSRF, roles, tenancy, heatmap, planner, audit, vendor."""

import re
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from collector import credentials, db, registry, roles
from collector.ingest import ingest_lines
from collector.server import create_app
from collector.web import auth, data, errorpage
from protocol.timefmt import parse_time

USERS = {
    "ann": ("acme", "admin"),
    "vic": ("acme", "viewer"),
    "aud": ("acme", "auditor"),
    "ven": (None, "vendor"),
    "bob": ("beta", "admin"),
}
PASSWORD = "correct horse battery"


@pytest.fixture
def world(settings: Any, tools: Any) -> Any:
    tools.apply(settings, tools.catalog())
    tools.apply(settings, tools.catalog("beta", ["z1"], licenses=[]))
    for name, (prov, role) in USERS.items():
        db.write_tx(settings.engine, lambda c, p=prov, r=role, n=name: auth.add_user(c, p, r, n, PASSWORD, 0))
    agent = tools.Agent()
    tools.enrol(settings, "acme", agent, parse_time("2026-09-01T00:00:00Z"))
    t0 = parse_time("2026-10-01T00:00:00Z")
    # Running on days 1-3 except 02:00-04:00 of day 2 (stopped), nothing after day 3.
    lines = [
        agent.beat(t0 + h * 3600 + 60, {"TR7-0001": "stopped" if 26 <= h < 28 else "running"})
        for h in range(72)
    ]
    assert all(r["status"] == "accepted" for r in ingest_lines(settings.engine, lines))
    return settings


def login(client: TestClient, user: str, password: str = PASSWORD) -> str:
    page = client.get("/ui/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    r = client.post(
        "/ui/login", data={"csrf": csrf, "username": user, "password": password}, follow_redirects=False
    )
    assert r.status_code == 303
    return r.headers.get("set-cookie", "")


def session_csrf(client: TestClient, path: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', client.get(path).text).group(1)


def test_login_sets_strict_cookie_and_wrong_password_fails(client: TestClient, world: Any) -> None:
    first = client.get("/ui/p/acme", follow_redirects=False)
    assert first.headers["location"] == "/ui/login?next=%2Fui%2Fp%2Facme"
    cookie = login(client, "ann")
    assert "tr7_session=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie
    assert "Secure" not in cookie  # plain http in this test
    assert client.get("/ui/p/acme").status_code == 200
    with TestClient(create_app(world)) as other:
        other.get("/ui/login")
        csrf = session_csrf(other, "/ui/login")
        r = other.post(
            "/ui/login",
            data={"csrf": csrf, "username": "ann", "password": "wrong password"},
            follow_redirects=False,
        )
        assert r.status_code == 401 and "tr7_session" not in r.headers.get("set-cookie", "")
        # the form again, saying why, with the user name kept to correct the password only
        assert 'id="wrong"' in r.text and 'name="username" autocomplete="username" value="ann"' in r.text
        assert re.search(r'name="csrf" value="([^"]+)"', r.text).group(1) == csrf
        assert other.get("/ui/p/acme", follow_redirects=False).status_code == 303
        # the page asked for before is kept across a wrong try
        r = other.post("/ui/login", data={"csrf": csrf, "username": "ann", "password": "wrong password",
                                          "next": "/ui/p/acme/instances"}, follow_redirects=False)
        assert 'name="next" value="/ui/p/acme/instances"' in r.text
        r = other.post("/ui/login", data={"csrf": csrf, "username": "ann", "password": PASSWORD,
                                          "next": "/ui/p/acme/instances"}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/ui/p/acme/instances"


def test_pages_name_the_provider_as_its_latest_catalog_does(client: TestClient, world: Any,
                                                            tools: Any) -> None:
    login(client, "ann")
    for page, heading in (("", "Acme (acme) — 2026-10"), ("/agents", "Agents of Acme (acme) — 2026-10"),
                          ("/instances", "Instances of Acme (acme) — 2026-10")):
        assert f"<h1>{heading}</h1>" in client.get(f"/ui/p/acme{page}?month=2026-10").text, page
    renamed = tools.catalog()
    renamed["provider"]["name"] = "Acme <Managed> IT"
    tools.apply(world, renamed)
    assert "<h1>Acme &lt;Managed&gt; IT (acme) — 2026-10</h1>" in client.get("/ui/p/acme?month=2026-10").text


def test_cookie_is_secure_over_https(world: Any) -> None:
    with TestClient(create_app(world), base_url="https://testserver") as c:
        assert "Secure" in login(c, "ann")


def test_sign_in_with_api_token(client: TestClient, world: Any, tools: Any) -> None:
    tok = tools.token(world, "acme", "viewer")
    page = client.get("/ui/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    r = client.post("/ui/login", data={"csrf": csrf, "token": tok}, follow_redirects=False)
    assert r.status_code == 303 and client.get("/ui/p/acme").status_code == 200
    # revoking the token ends the sessions opened with it, not only its bearer use
    from collector.cli import main as collector_main

    with db.read_conn(world.engine) as c:
        listed = credentials.list_api_tokens(c, "acme")
    ident = next(x["id"] for x in listed if registry.digest(tok).startswith(x["id"]))
    assert collector_main(["token", "revoke", ident, "--data-dir", str(world.data_dir),
                           "--db", world.db_url]) == 0
    assert client.get("/ui/p/acme", follow_redirects=False).headers["location"] == (
        "/ui/login?next=%2Fui%2Fp%2Facme&ended=1")
    assert client.get("/v1/providers", headers={"Authorization": f"Bearer {tok}"}).status_code == 401


def test_an_appliance_token_reads_entitlements_and_opens_no_page(client: TestClient, world: Any,
                                                                   tools: Any) -> None:
    """docs/dashboards.md had appliances configured with a viewer token, which also read every
    customer's prices and invoices; an appliance token reads the entitlement API only."""
    from collector.cli import main as collector_main

    tok = tools.token(world, "acme", "appliance")
    bearer = {"Authorization": f"Bearer {tok}"}
    assert client.get("/v1/entitlements/TR7-0001", headers=bearer).json()["entitled"] is True
    for path in ("/v1/providers/acme/invoices", "/v1/providers/acme/customers", "/v1/providers"):
        assert client.get(path, headers=bearer).status_code == 403, path
    csrf = re.search(r'name="csrf" value="([^"]+)"', client.get("/ui/login").text).group(1)
    r = client.post("/ui/login", data={"csrf": csrf, "token": tok}, follow_redirects=False)
    assert r.headers["location"] == "/ui/login?error=pages" and auth.COOKIE not in r.cookies
    assert "opens no page" in client.get(r.headers["location"]).text
    assert client.get("/ui/p/acme", follow_redirects=False).headers["location"].startswith("/ui/login?")
    # a session of that role (none can be opened: defence in depth) reaches no provider page
    from collector.readapi import Scope

    sid = db.write_tx(world.engine, lambda c: auth.open_session(c, Scope("acme", "appliance"), "x",
                                                                  int(time.time())))
    client.cookies.clear()
    client.cookies.set(auth.COOKIE, sid)
    r = client.get("/ui/p/acme")
    assert r.status_code == 403 and r.json()["detail"] == roles.denial(roles.PAGES)
    client.cookies.clear()
    # made by the CLI like any other role; no web user can hold it
    assert collector_main(["token", "add", "--provider", "acme", "--role", "appliance",
                           "--data-dir", str(world.data_dir), "--db", world.db_url]) == 0
    with pytest.raises(registry.RegistryError):
        db.write_tx(world.engine, lambda c: auth.add_user(c, "acme", "appliance", "app", PASSWORD, 0))


def test_csrf_is_checked_on_every_form(client: TestClient, world: Any) -> None:
    client.get("/ui/login")
    assert client.post("/ui/login", data={"username": "ann", "password": PASSWORD}).status_code == 403
    login(client, "ann")
    path = "/ui/p/acme/customers/c1/account"
    assert client.post(path, data={"action": "failed"}).status_code == 403
    assert client.post(path, data={"action": "failed", "csrf": "forged"}).status_code == 403
    assert client.post("/ui/logout", data={}).status_code == 403
    assert client.post("/ui/p/acme/audit/2026-10/verify", data={}).status_code == 403
    token = session_csrf(client, "/ui/p/acme/customers/c1?month=2026-10")
    r = client.post(path, data={"action": "failed", "csrf": token, "email": "ap@c1.example"})
    assert r.status_code == 200 and "overdue" in r.text
    assert "account_overdue" in client.get("/ui/p/acme?month=2026-10").text


def test_roles(client: TestClient, world: Any) -> None:
    login(client, "vic")
    assert client.get("/ui/p/acme/planner/c1?month=2026-10").status_code == 200
    assert client.get("/ui/p/acme/audit").status_code == 403
    token = session_csrf(client, "/ui/p/acme/customers/c1?month=2026-10")
    r = client.post("/ui/p/acme/customers/c1/account", data={"action": "failed", "csrf": token})
    assert r.status_code == 403  # only an admin records payments
    with TestClient(create_app(world)) as aud:
        login(aud, "aud")
        assert aud.get("/ui/p/acme/audit").status_code == 200
        assert aud.get("/ui/p/acme/planner/c1").status_code == 403


def test_tenancy(client: TestClient, world: Any) -> None:
    login(client, "bob")
    for path in (
        "/ui/p/acme",
        "/ui/p/acme/customers/c1",
        "/ui/p/acme/instances/TR7-0001",
        "/ui/p/acme/agents",
        "/ui/p/acme/invoices/2026-10.pdf?customer=c1",
        "/ui/p/acme/audit/2026-10/bundle.tar.gz",
        "/ui/p/acme/instances/TR7-0001/evidence?hour=2026-10-01T05:00:00Z",
        "/ui/vendor",
    ):
        assert client.get(path).status_code == 403, path
    assert client.get("/ui/p/beta/customers/z1").status_code == 200


def test_heatmap_classes_and_evidence(client: TestClient, world: Any, tools: Any) -> None:
    login(client, "ann")
    html = client.get("/ui/p/acme/customers/c1?month=2026-10").text

    def cls(hour: str) -> str:
        row = re.search(rf'<tr data-day="{hour[:10]}">(.*?)</tr>', html).group(1)
        return {"a": "active", "i": "inactive", "u": "unknown", "b": "bridged"}[
            re.findall(r'<td class="(\w)">', row)[int(hour[11:13])]
        ]

    assert cls("2026-10-01T05:00:00Z") == "active"
    assert cls("2026-10-02T02:00:00Z") == "inactive"
    assert cls("2026-10-05T10:00:00Z") == "unknown"
    # each day's counts in text too (running on days 1-3 except 02:00-04:00 of day 2)
    counts = dict(re.findall(r'<tr data-day="2026-10-0(\d)">.*?<th class="n">(\d+)</th></tr>', html))
    assert (counts["1"], counts["2"], counts["3"], counts["4"]) == ("24", "22", "24", "0")
    ev = client.get("/ui/p/acme/instances/TR7-0001/evidence?hour=2026-10-02T03:00:00Z").text
    assert ev.count('<pre class="jws">') == 1 and "stopped" in ev
    agents = client.get("/ui/p/acme/agents?month=2026-10").text
    assert "a1 (kvm)" in agents and "gaps 0" in agents and 'id="rejected"' not in agents
    # a line of an enrolled key whose signature is not that key's: counted under its provider
    other = tools.Agent("b2")
    tools.enrol(world, "acme", other, parse_time("2026-09-01T00:00:00Z"))
    forged = other.beat(parse_time("2026-10-04T00:00:00Z"), {"TR7-0001": "running"}).split(".")
    forged[2] = "A" * 86  # 64 zero bytes
    assert ingest_lines(world.engine, [".".join(forged)])[0]["reason"].startswith("signature")
    agents = client.get("/ui/p/acme/agents?month=2026-10").text
    row = re.search(r'<tr data-rule="signature">(.*?)</tr>', agents).group(1)
    assert re.findall(r"<td[^>]*>([^<]*)</td>", row)[:2] == ["signature", "1"]


def test_a_past_months_agents_page_shows_that_months_last_heartbeat(client: TestClient, world: Any,
                                                                     tools: Any) -> None:
    login(client, "ann")
    late = tools.Agent("late")
    tools.enrol(world, "acme", late, parse_time("2026-09-01T00:00:00Z"))
    lines = [late.beat(parse_time(t), {"TR7-0001": "running"})
             for t in ("2026-10-10T00:00:00Z", "2026-11-02T00:00:00Z")]
    assert all(r["status"] == "accepted" for r in ingest_lines(world.engine, lines))

    def shown(month: str) -> list[str]:
        html = client.get(f"/ui/p/acme/agents?month={month}").text
        row = re.search(rf'<tr data-kid="{late.kid}">(.*?)</tr>', html, re.S).group(1)
        return [html.count(f"Last heartbeat of {month}"), re.findall(r"<td>([^<]*)</td>", row)[0]]

    assert shown("2026-10") == [1, "2026-10-10T00:00:00Z (seq 1)"]
    assert shown("2026-11") == [1, "2026-11-02T00:00:00Z (seq 2)"]
    assert shown("2026-09") == [1, "none"]  # enrolled, no heartbeat that month


def test_planner_break_even(client: TestClient, world: Any) -> None:
    login(client, "ann")
    html = client.get("/ui/p/acme/planner/c1?month=2026-10&fixed_price=2.25").text
    row = re.search(r'<tr data-license="SL-1">(.*?)</tr>', html, re.S).group(1)
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", row)
    # 70 running hours at 0.0450 = 3.15; 2.25 / 0.0450 = 50 hours to break even.
    assert cells == ["SL-1", "TR7-0001", "70", "0.0450", "3.15", "2.25", "50", "fixed"]
    # an amount no price divides within the decimal context is refused, not a 500
    # and a price of nothing (it read as "fixed is cheaper", break-even 0 hours)
    for bad in ("1e999999999", "1e-999999999", "-1", "NaN", "x", "0", "0.00"):
        assert client.get(f"/ui/p/acme/planner/c1?month=2026-10&fixed_price={bad}").status_code == 400, bad
    assert "Fixed price (EUR)" in html and "PAYG cost (EUR)" in html  # the amounts' currency


def test_planner_shows_every_price_a_license_was_billed_at() -> None:
    from decimal import Decimal

    from collector.web.tools import plan

    usage = {"rows": [{"customer": "c1", "license": "SL-1", "instance": "TR7-1"}]}
    line = {"customer": "c1", "license": "SL-1", "adjusts": None}
    invoice = {"lines": [{**line, "quantity": "400", "price": "0.0700", "amount": "28.00"},
                         {**line, "quantity": "344", "price": "0.0900", "amount": "30.96"}]}
    (item,) = plan(usage, invoice, "c1", Decimal("20"))
    assert (item["hours"], item["price"], item["payg"]) == (744, "0.0700–0.0900", "58.96")
    assert item["fixed"] == "20.00"
    assert item["break_even"] == 223 and item["cheaper"] == "fixed"  # 20 / 0.09, rounded up


def test_audit_bundle_verifies(client: TestClient, world: Any, tmp_path: Path) -> None:
    import io
    import tarfile
    import tempfile

    from audit.verify import verify_bundle
    from collector.web import tools

    login(client, "aud")
    before = set(Path(tempfile.gettempdir()).glob("tr7-bundle-*"))
    r = client.get("/ui/p/acme/audit/2026-10/bundle.tar.gz")
    assert r.status_code == 200 and r.content[:2] == b"\x1f\x8b"
    with tarfile.open(fileobj=io.BytesIO(r.content)) as tar:
        tar.extractall(tmp_path, filter="data")
    assert verify_bundle(tmp_path / "acme-2026-10", workers=1).ok
    assert set(Path(tempfile.gettempdir()).glob("tr7-bundle-*")) == before  # sent from disk, then removed
    token = session_csrf(client, "/ui/p/acme/audit")
    r = client.post("/ui/p/acme/audit/2026-10/verify", data={"csrf": token})
    assert r.status_code == 200 and "VERIFIED: 72 heartbeat lines" in r.text
    # another bundle of the provider is being made by this process: not queued behind it
    with tools._one_export("acme"):
        r = client.get("/ui/p/acme/audit/2026-10/bundle.tar.gz")
        assert r.status_code == 429 and r.headers["retry-after"] == "60" and "of this provider" in r.text
        assert client.post("/ui/p/acme/audit/2026-10/verify", data={"csrf": token}).status_code == 429
    # another tenant's bundle being made leaves a slot: one tenant cannot keep the others at 429
    with tools._one_export("beta"):
        assert client.get("/ui/p/acme/audit/2026-10/bundle.tar.gz").status_code == 200
        with tools._one_export("gamma"):  # every slot taken
            r = client.get("/ui/p/acme/audit/2026-10/bundle.tar.gz")
            assert r.status_code == 429 and "other audit bundles" in r.text
    assert client.get("/ui/p/acme/audit/2026-10/bundle.tar.gz").status_code == 200


def test_audit_page_names_the_key_to_pin_and_the_retired_ones(client: TestClient, world: Any) -> None:
    import html

    from collector import keyrotation, tlog

    login(client, "aud")
    first = tlog.signer(world).verifier_key()
    page = client.get("/ui/p/acme/audit").text
    assert f"<code>{first}</code>" in page and "retired-keys" not in page
    r = keyrotation.rotate(world, parse_time("2026-11-02T00:00:00Z"))
    page = html.unescape(client.get("/ui/p/acme/audit").text)
    assert f"signed by the collector key <code>{r.new}</code>" in page
    retired = page[page.index('id="retired-keys"'):]
    assert f"<td><code>{first}</code></td><td>2026-11-02T00:00:00Z</td>" in retired
    assert r.statement in retired
    # a key replaced (lost): no statement to show, the reason instead
    keyrotation.replace(world, parse_time("2026-11-03T00:00:00Z"), "disk lost")
    retired = html.unescape(client.get("/ui/p/acme/audit").text)
    retired = retired[retired.index('id="retired-keys"'):]
    assert f"<td><code>{r.new}</code></td><td>2026-11-03T00:00:00Z</td>" in retired
    assert "none: replaced by <code>tr7-collector key replace</code> (disk lost)" in retired


def test_vendor_sees_hours_never_prices(client: TestClient, world: Any) -> None:
    login(client, "ven")
    html = client.get("/ui/vendor?month=2026-10").text
    assert 'data-provider="acme"' in html and ">70<" in html and "SL-1" in html
    assert "0.0450" not in html and "EUR" not in html
    assert client.get("/ui/p/acme").status_code == 403


def test_reminders_show_on_the_customer_page(client: TestClient, world: Any, monkeypatch: Any) -> None:
    monkeypatch.delenv("TR7_SMTP_HOST", raising=False)
    from collector.accounts import store
    from collector.accounts.mail import SmtpSettings, smtp_mailer

    t0 = parse_time("2026-10-05T00:00:00Z")
    mailer = smtp_mailer(SmtpSettings.from_env())  # no TR7_SMTP_HOST here: recorded as not sent
    db.write_tx(world.engine, lambda c: store.payment_failed(c, "acme", "c1", t0, "ap@c1.example", mailer))
    db.write_tx(world.engine, lambda c: store.tick_all(c, t0 + 7 * 86400, mailer))
    login(client, "vic")
    html = client.get("/ui/p/acme/customers/c1?month=2026-10").text
    assert "reminder 2" in html and "not sent: TR7_SMTP_HOST is not set" in html
    # the viewer reads where reminders go, as its API token does (GET .../account), not only the
    # admin's form
    assert 'reminders go to <span id="account-email">ap@c1.example</span>' in html
    assert client.get("/ui/p/acme/customers/c1?month=2026-10").text.count("payment_failed") == 1


def test_dashboards_follow_new_heartbeats(client: TestClient, world: Any, tools: Any) -> None:
    login(client, "ann")

    def hours() -> int:
        html = client.get("/ui/p/acme?month=2026-10").text
        return int(re.search(r'id="active-hours">[^<]*<b>(\d+)</b>', html).group(1))

    assert hours() == 70
    agent = tools.Agent("second")
    tools.enrol(world, "acme", agent, parse_time("2026-09-01T00:00:00Z"))
    t = parse_time("2026-10-10T00:00:00Z")
    ingest_lines(world.engine, [agent.beat(t + h * 3600, {"TR7-0001": "running"}) for h in range(5)])
    deadline = time.monotonic() + 30
    while hours() != 75:  # served from the last result while it is recomputed in the background
        assert time.monotonic() < deadline, "the overview never caught up with the new heartbeats"
        time.sleep(0.2)


def test_bridged_hours_in_the_heatmap(client: TestClient, world: Any, tools: Any) -> None:
    # The policy has no validity period: it reprices the open months, a deliberate correction here.
    tools.apply(world, tools.catalog(policy={"gaps": {"mode": "bridge", "max_hours": 2}}), retroactive=True)
    agent = tools.Agent("bridge")
    tools.enrol(world, "acme", agent, parse_time("2026-09-01T00:00:00Z"))
    t = parse_time("2026-10-10T00:00:00Z")
    # Active at 00:00 and 03:00, nothing at 01:00 and 02:00: a 2-hour gap the policy bridges.
    ingest_lines(
        world.engine,
        [agent.beat(t + 60, {"TR7-0001": "running"}), agent.beat(t + 3 * 3600 + 60, {"TR7-0001": "running"})],
    )
    login(client, "ann")
    html = client.get("/ui/p/acme/instances/TR7-0001?month=2026-10").text
    row = re.search(r'<tr data-day="2026-10-10">(.*?)</tr>', html).group(1)
    assert re.findall(r'<td class="(\w)">', row)[:5] == ["a", "b", "b", "a", "u"]


def test_overview_lists_what_happened_across_the_month_boundary(
    client: TestClient, world: Any, tools: Any
) -> None:
    agent = tools.Agent("skewed")
    tools.enrol(world, "acme", agent, parse_time("2026-09-01T00:00:00Z"))
    t0 = parse_time("2026-10-01T00:00:00Z")
    # seq 1 on 1 October, then the clock goes back: seq 2 on 30 September
    lines = [agent.beat(t0 + 30, {"TR7-0001": "running"}), agent.beat(t0 - 10, {"TR7-0001": "running"})]
    assert all(r["status"] == "accepted" for r in ingest_lines(world.engine, lines))
    login(client, "ann")
    html = client.get("/ui/p/acme?month=2026-10").text
    row = re.search(r'<tr class="alert" data-type="clock_back_across_months">(.*?)</tr>', html, re.S)
    assert row is not None, "the overview does not show the clock going back across the boundary"
    assert "agent: skewed" in row.group(1) and "month_before: 2026-09" in row.group(1)
    assert "seq: 2" in row.group(1)


def test_agents_that_saw_an_instance_skip_heartbeats_that_cannot_name_it(
    client: TestClient, world: Any, tools: Any
) -> None:
    """The fragment parsed every heartbeat of an hour a day (3.8 s a click with 40 agents polling
    every minute); a payload that does not hold the instance's JSON string, and no escape, is
    skipped unparsed; one with an escape is parsed."""
    import base64
    import json

    from collector.web import detail

    b, other = tools.Agent("b"), tools.Agent("other")
    for ag in (b, other):
        tools.enrol(world, "acme", ag, parse_time("2026-09-01T00:00:00Z"))
    t0 = parse_time("2026-10-01T00:00:00Z")
    lines = [b.beat(t0 + 120, {"TR7-0001": "running", "TR7-0002": "running"}),
             other.beat(t0 + 180, {"TR7-0002": "running"})]
    assert all(r["status"] == "accepted" for r in ingest_lines(world.engine, lines))
    login(client, "ann")
    html = client.get("/ui/p/acme/instances/TR7-0001/agents?month=2026-10").text
    assert "<td>2026-10-01</td><td>agent, b</td>" in html  # not "other", which saw TR7-0002 only

    def jws(payload: bytes) -> str:
        return "h." + base64.urlsafe_b64encode(payload).rstrip(b"=").decode() + ".s"

    needle = json.dumps("TR7-0001").encode()
    assert detail._may_name(jws(b'{"observations":[{"instance":"TR7-0001"}]}'), needle)
    assert detail._may_name(jws(b'{"observations":[{"instance":"\\u0054R7-0001"}]}'), needle)  # escaped
    assert not detail._may_name(jws(b'{"observations":[{"instance":"TR7-0002"}]}'), needle)


def test_a_closed_month_is_labelled_invoiced_and_the_planner_uses_its_invoiced_hours(
    client: TestClient, world: Any, tools: Any
) -> None:
    """A closed month's pages said "Estimate", and the planner put the current hours (late ones
    included) beside the invoiced cost: 720 h for the cost of 710."""
    from collector import accounting

    login(client, "ann")
    assert "Estimated total" in client.get("/ui/p/acme?month=2026-10").text
    db.write_tx(world.engine, lambda c: accounting.close(c, world, "acme", "2026-10"))
    late = tools.Agent("late")
    tools.enrol(world, "acme", late, parse_time("2026-09-01T00:00:00Z"))
    t = parse_time("2026-10-05T00:00:00Z")  # day 5: no hour of it was billed
    beats = [late.beat(t + h * 3600 + 60, {"TR7-0001": "running"}) for h in range(3)]
    assert {r["status"] for r in ingest_lines(world.engine, beats)} == {"accepted"}
    overview = client.get("/ui/p/acme?month=2026-10").text
    assert "Invoiced total" in overview and "Estimated total" not in overview
    page = client.get("/ui/p/acme/customers/c1?month=2026-10").text
    assert "Invoice (closed)" in page and 'id="closed-note"' in page
    plan = client.get("/ui/p/acme/planner/c1?month=2026-10").text
    hours = re.search(r'<tr data-license="SL-1">.*?<td class="num">(\d+)</td>', plan).group(1)
    assert hours == "70"  # as invoiced (70 active hours), not 73 with the late ones


def test_the_overview_says_when_its_amounts_are_being_recomputed(
    client: TestClient, world: Any, tools: Any, monkeypatch: Any
) -> None:
    """After a correction the overview showed the old totals (stale while revalidating) with no
    sign of it, while the page's own CSV and `bill` showed the new ones."""
    import threading

    from collector import resultcache

    login(client, "ann")
    assert 'id="stale-note"' not in client.get("/ui/p/acme?month=2026-10").text
    held = threading.Event()
    real = resultcache._refresh
    monkeypatch.setattr(resultcache, "_refresh", lambda *a: (held.wait(10), real(*a)))
    doc = tools.catalog()
    doc["rates"]["hourly"][0]["price"] = "0.0500"
    tools.apply(world, doc, retroactive=True)
    assert 'id="stale-note"' in client.get("/ui/p/acme?month=2026-10").text
    held.set()
    for _ in range(100):
        if 'id="stale-note"' not in client.get("/ui/p/acme?month=2026-10").text:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("still marked stale after the recomputation")


def test_a_closed_month_whose_late_heartbeats_cannot_be_priced_still_shows_what_was_invoiced(
    client: TestClient, world: Any, tools: Any
) -> None:
    from collector import accounting

    doc = tools.catalog()
    doc["licenses"].append({**doc["licenses"][0], "id": "SL-2", "instance": "TR7-0002", "capacity": [
        {"from": "2026-01-01T00:00:00Z", "bundle": "pro", "bandwidth_mbps": 2000, "vservices": 10}]})
    tools.apply(world, doc, retroactive=True)  # SL-2's capacity has no rate; nothing of it ran in October
    closed = db.write_tx(world.engine, lambda c: accounting.close(c, world, "acme", "2026-10"))
    billed = closed.billed["total"]
    late = tools.Agent("late")
    tools.enrol(world, "acme", late, parse_time("2026-09-01T00:00:00Z"))
    beat = late.beat(parse_time("2026-10-05T00:01:00Z"), {"TR7-0002": "running"})
    assert ingest_lines(world.engine, [beat])[0]["status"] == "accepted"
    login(client, "ann")
    overview = client.get("/ui/p/acme?month=2026-10").text
    assert re.search(rf'id="estimate">Invoiced total<b>{re.escape(billed)} EUR', overview), overview[:2000]
    assert client.get("/ui/p/acme/planner/c1?month=2026-10").status_code == 200


def test_a_provider_id_in_any_script_downloads_its_bundle(
    client: TestClient, settings: Any, tools: Any
) -> None:
    """Provider ids are any printable text; the bundle's Content-Disposition was written by hand
    and could not encode 東京 (a 500, after the export had run)."""
    tools.apply(settings, tools.catalog("東京", ["c1"], licenses=[]))
    db.write_tx(settings.engine, lambda c: auth.add_user(c, "東京", "auditor", "tokyo", PASSWORD, 0))
    login(client, "tokyo")
    r = client.get("/ui/p/東京/audit/2026-10/bundle.tar.gz")
    assert r.status_code == 200 and r.content[:2] == b"\x1f\x8b"
    name = "audit-%E6%9D%B1%E4%BA%AC-2026-10.tar.gz"
    assert r.headers["content-disposition"].endswith(f"filename*=UTF-8''{name}")


def test_a_pruned_month_says_where_its_bundle_went(client: TestClient, world: Any, tmp_path: Path) -> None:
    """After `tr7-collector prune`: the audit page names the archive instead of offering a bundle,
    a bundle asked for anyway is 410 with where it went, and the pages that show heartbeats say
    what was pruned instead of failing on a heartbeat that is not there."""
    from collector import accounting, prune

    db.write_tx(world.engine, lambda c: accounting.close(c, world, "acme", "2026-10"))
    prune.prune(world, world.engine, "acme", "2026-10", tmp_path / "oct", 0)
    login(client, "aud")
    audit = client.get("/ui/p/acme/audit").text
    row = re.search(r'<tr data-month="2026-10">(.*?)</tr>', audit, re.S).group(1)
    assert f"archived to <code>{tmp_path / 'oct'}</code>" in row and "bundle.tar.gz" not in row
    r = client.get("/ui/p/acme/audit/2026-10/bundle.tar.gz")
    assert r.status_code == 410 and str(tmp_path / "oct") in r.text
    login(client, "ann")
    ev = client.get("/ui/p/acme/instances/TR7-0001/evidence?hour=2026-10-02T03:00:00Z")
    assert ev.status_code == 200 and '<pre class="jws">' not in ev.text and 'id="pruned-note"' in ev.text
    assert str(tmp_path / "oct") in ev.text
    days = client.get("/ui/p/acme/instances/TR7-0001/agents?month=2026-10")
    assert days.status_code == 200 and "2026-10-01" in days.text
    assert client.get("/ui/p/acme/agents?month=2026-10").status_code == 200
    # the agent's last heartbeat of October stays (November's anchor): its hour still shows it
    last = client.get("/ui/p/acme/instances/TR7-0001/evidence?hour=2026-10-03T23:00:00Z").text
    assert last.count('<pre class="jws">') == 1 and 'id="pruned-note"' not in last


def test_the_overview_says_which_hours_it_counts_and_when_a_month_has_not_begun(
    client: TestClient, world: Any
) -> None:
    """An MSP read `?month=` of a month to come as an ordinary month (an estimate, 0 hours), and
    "Active hours month-to-date" on a closed month as its billed hours."""
    login(client, "ann")
    future = client.get("/ui/p/acme?month=2099-01").text
    assert 'id="future-month"' in future and "has not begun" in future
    assert "none: no instance was active in this or the previous UTC clock hour" in future
    past = client.get("/ui/p/acme?month=2026-10").text
    assert 'id="future-month"' not in past and "Active hours observed<b>" in past
    assert "the invoice bills the PAYG ones" in past
    assert 'name="viewport"' in past


def test_an_ended_session_says_so_and_returns_to_the_page_after_signing_in(
    client: TestClient, world: Any
) -> None:
    """A form sent after the session ended landed on the sign-in form with no word that it was not
    recorded, and signing in led to the overview, not to the page asked for."""
    login(client, "ann")
    client.cookies.clear()
    client.cookies.set(auth.COOKIE, "ended-or-forged")
    path = "/ui/p/acme/customers/c1?month=2026-10"
    r = client.get(path, follow_redirects=False)
    assert r.headers["location"] == (
        "/ui/login?next=%2Fui%2Fp%2Facme%2Fcustomers%2Fc1%3Fmonth%3D2026-10&ended=1")
    form = client.get(r.headers["location"]).text
    assert "Your session has ended" in form and f'name="next" value="{path}"' in form
    sent = client.post("/ui/p/acme/customers/c1/account", data={"action": "failed", "csrf": "x"},
                       follow_redirects=False)
    assert sent.headers["location"] == "/ui/login?ended=1&lost=1"
    assert "was not recorded" in client.get(sent.headers["location"]).text
    csrf = re.search(r'name="csrf" value="([^"]+)"', form).group(1)
    r = client.post("/ui/login", data={"csrf": csrf, "username": "ann", "password": PASSWORD, "next": path},
                    follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == path
    # never to another host, nor back to the sign-in form
    for bad in ("https://evil.example/ui/", "//evil.example/ui/", "/ui/login?next=/ui/", "/ui/\\evil",
                "/ui/../v1/providers", "/ui/%2E%2e/v1/providers", "/ui/p/./x", "/ui/p/.."):
        assert errorpage.safe_next(bad) is None, bad
    assert errorpage.safe_next("/ui/p/acme?month=2026-10&x=../y") == "/ui/p/acme?month=2026-10&x=../y"


def test_a_browser_gets_an_error_page_and_an_api_client_json(client: TestClient, world: Any) -> None:
    login(client, "ann")
    html = {"Accept": "text/html,application/xhtml+xml"}
    r = client.get("/ui/p/acme/customers/nobody?month=2026-10", headers=html)
    assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")
    assert "<title>404 Not found" in r.text and "no customer nobody" in r.text and 'href="/ui/"' in r.text
    r = client.get("/ui/p/acme?month=2026-13", headers=html)
    assert r.status_code == 400 and "text/html" in r.headers["content-type"]
    r = client.post("/ui/p/acme/customers/c1/account", data={"action": "failed", "csrf": "stale"},
                    headers=html)
    assert r.status_code == 403 and "reload the page" in r.text
    r = client.get("/ui/p/acme/planner/c1?month=2026-10&fixed_price=20,50", headers=html)
    assert r.status_code in (400, 422) and "text/html" in r.headers["content-type"]
    assert "is not an amount (write it with a dot: 20.50)" in r.text
    # scripts and the API keep the JSON detail
    assert client.get("/ui/p/acme/customers/nobody?month=2026-10").json()["detail"] == "no customer nobody"
    assert client.get("/v1/providers/acme/customers", headers=html).headers["content-type"].startswith(
        "application/json")


def test_every_alert_type_says_what_to_do(client: TestClient, world: Any) -> None:
    """The overview's alerts said what happened, in codes, and not what to do about it."""
    from collector.web.advice import ADVICE

    spec = client.get("/openapi.json").json()
    kinds = spec["components"]["schemas"]["Alerts"]["properties"]["alerts"]["items"]["discriminator"]
    assert set(ADVICE) == set(kinds["mapping"])
    login(client, "ann")
    html = client.get("/ui/p/acme?month=2026-10").text
    assert "<th>What to do</th>" in html and 'id="no-catalog"' not in html


def test_a_provider_without_a_catalog_is_told_how_to_start(client: TestClient, world: Any) -> None:
    db.write_tx(world.engine, lambda c: registry.ensure_provider(c, "fresh"))
    db.write_tx(world.engine, lambda c: auth.add_user(c, "fresh", "admin", "fred", PASSWORD, 0))
    login(client, "fred")
    html = client.get("/ui/p/fresh").text
    assert 'id="no-catalog"' in html and "tr7-collector apply" in html


def test_spool_lag_reads_as_a_duration() -> None:
    """The agents page showed a month-old spool as 3072311 (seconds)."""
    from collector.web.common import duration

    got = [duration(x) for x in (None, 42, 725, 18180, 3072311, 86400)]
    assert got == ["–", "42 s", "12 min", "5 h 3 min", "35 d 13 h", "1 d"]


def test_the_instances_page_finds_and_pages_every_instance(
    client: TestClient, world: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A provider of 300 instances could reach the 101st running one only by typing its URL."""
    from collector.web import listing

    login(client, "ann")
    html = client.get("/ui/p/acme/instances?month=2026-10").text
    row = re.search(r'<tr data-instance="TR7-0001">(.*?)</tr>', html, re.S).group(1)
    with db.read_conn(world.engine) as c:
        hours = data.active_hours(c, "acme", "2026-10")["TR7-0001"]
    assert "Customer c1" in row and "SL-1 (payg, hour)" in row and f'<td class="num">{hours}</td>' in row
    assert 'data-instance="TR7-0001"' in client.get("/ui/p/acme/instances?month=2026-10&q=customer C1").text
    assert "<td colspan=\"5\">none</td>" in client.get("/ui/p/acme/instances?month=2026-10&q=zzz").text
    monkeypatch.setattr(listing, "PAGE", 1)
    first = client.get("/ui/p/acme/instances?month=2026-10").text
    total = int(re.search(r'<p id="count">(\d+) instance', first).group(1))
    assert first.count("<tr data-instance=") == 1 and ('id="next"' in first) == (total > 1)
    # a start past the end shows the last page (it said "100000000000000000000000–… shown")
    far = client.get("/ui/p/acme/instances?month=2026-10&start=99999999999999999999999").text
    assert far.count("<tr data-instance=") == 1 and "99999" not in far


def test_the_overview_says_stale_while_its_alerts_are_recomputed(
    client: TestClient, world: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bill and its alerts are cached apart: the alerts being recomputed showed no note."""
    from collector.web import data as web_data

    login(client, "ann")
    assert 'id="stale-note"' not in client.get("/ui/p/acme?month=2026-10").text
    monkeypatch.setattr(web_data, "outdated", lambda slot: slot[0] == "licensing")
    assert 'id="stale-note"' in client.get("/ui/p/acme?month=2026-10").text


def test_an_error_page_takes_any_detail(client: TestClient) -> None:
    from starlette.requests import Request

    req = Request({"type": "http", "method": "GET", "path": "/ui/x", "headers": [], "query_string": b"",
                   "app": client.app})
    for detail in ({"a": 1}, ["x", "y"], None, [{"loc": ["query", "month"], "msg": "bad"}]):
        r = errorpage.error_page(req, 400, detail)
        assert r.status_code == 400
    page = errorpage.error_page(req, 422, [{"loc": ["query", "month"], "msg": "bad"}])
    assert "month: bad" in bytes(page.body).decode()


def test_a_downgrade_no_tick_recorded_reads_as_one_since_the_grace_ran_out(client: TestClient, world: Any,
                                                                          tools: Any) -> None:
    # UX review: the alert said "downgraded since" the payment failure, and the page "downgraded at
    # <a past date> unless paid · next reminder <a past date>" while the state read downgraded
    from collector.accounts import store
    from collector.alerts import account_alerts

    failed = parse_time("2026-10-05T00:00:00Z")
    db.write_tx(world.engine, lambda c: store.payment_failed(c, "acme", "c1", failed))  # no tick since
    now = int(time.time())
    with db.read_conn(world.engine) as c:
        assert account_alerts(c, "acme", now) == [
            {"type": "account_downgraded", "customer": "c1", "since": "2026-10-20T00:00:00Z"}]
        assert account_alerts(c, "acme", failed + 86400) == [
            {"type": "account_overdue", "customer": "c1", "since": "2026-10-05T00:00:00Z"}]
    admin = {"Authorization": f"Bearer {tools.token(world, 'acme', 'admin')}"}
    acc = client.get("/v1/providers/acme/customers/c1/account", headers=admin).json()
    assert (acc["state"], acc["since"], acc["overdue_since"]) == (
        "downgraded", "2026-10-20T00:00:00Z", "2026-10-05T00:00:00Z")
    assert acc["downgrade_at"] is None and acc["next_reminder_at"] is None
    login(client, "ann")
    html = client.get("/ui/p/acme/customers/c1?month=2026-10").text
    state = re.search(r'<p id="account-state">(.*?)</p>', html, re.S).group(1)
    assert "downgraded since 2026-10-20T00:00:00Z" in state and "overdue since 2026-10-05T00:00:00Z" in state
    assert "unless paid" not in state and "next reminder" not in state
