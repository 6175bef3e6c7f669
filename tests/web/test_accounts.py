"""Accounts over simulated time: reminders every 3 days, downgrade at day 15, billing follows."""

from typing import Any

from collector import accounting, db
from collector.accounts import machine as m
from collector.accounts import store
from collector.accounts.mail import SmtpSettings, smtp_mailer
from collector.ingest import ingest_lines
from protocol.timefmt import parse_time

DAY = 86400
T0 = parse_time("2026-10-05T00:00:00Z")


def test_machine_reminders_on_days_3_6_9_12_then_downgraded_on_day_15() -> None:
    acc, acts = m.payment_failed(m.Account(), T0)
    assert acc.state == m.OVERDUE and [a.kind for a in acts] == ["payment_failed"]
    seen = []
    for day in range(1, 16):
        acc, acts = m.tick(acc, T0 + day * DAY)
        seen += [(day, a.kind, a.number) for a in acts]
    assert seen == [
        (3, "reminder", 1),
        (6, "reminder", 2),
        (9, "reminder", 3),
        (12, "reminder", 4),
        (15, "downgraded", 0),
    ]
    assert acc.state == m.DOWNGRADED and acc.since == T0 + 15 * DAY
    acc, acts = m.paid(acc, T0 + 20 * DAY)
    assert acc.state == m.ACTIVE and [a.kind for a in acts] == ["paid"]


def test_machine_effective_state_and_late_ticks() -> None:
    acc, _ = m.payment_failed(m.Account(), T0)
    assert m.effective(acc, T0 + 15 * DAY - 1) == m.OVERDUE
    assert m.effective(acc, T0 + 15 * DAY) == m.DOWNGRADED  # before any tick has run
    late, acts = m.tick(acc, T0 + 7 * DAY)  # the job was down for a week: one reminder, not two
    assert [(a.kind, a.number, a.at) for a in acts] == [("reminder", 2, T0 + 6 * DAY)]
    late, acts = m.tick(late, T0 + 16 * DAY)
    assert [(a.kind, a.at) for a in acts] == [("downgraded", T0 + 15 * DAY)]  # dated at the grace end
    assert late.reminders == 2  # as counted by day 7: those due after it were never sent (it said 4)
    never, acts = m.tick(acc, T0 + 20 * DAY)  # no tick at all in the grace period
    assert [a.kind for a in acts] == ["downgraded"] and never.reminders == 0
    again, acts = m.payment_failed(acc, T0 + DAY)
    assert again == acc and acts == []  # a second failure does not restart the grace period
    back, acts = m.paid(acc, T0 + 5 * DAY)
    assert back.state == m.ACTIVE and [a.kind for a in acts] == ["reminder", "paid"]


def _month_of_beats(settings: Any, tools: Any) -> None:
    tools.apply(settings, tools.catalog())
    agent = tools.Agent()
    tools.enrol(settings, "acme", agent, parse_time("2026-09-01T00:00:00Z"))
    start = parse_time("2026-10-01T00:00:00Z")
    lines = [agent.beat(start + h * 3600 + 60, {"TR7-0001": "running"}) for h in range(31 * 24)]
    assert all(r["status"] == "accepted" for r in ingest_lines(settings.engine, lines))


def test_reminders_mailed_downgrade_not_billed_and_paid_restores(
    settings: Any, tools: Any, smtp: Any
) -> None:
    _month_of_beats(settings, tools)
    eng, mailer = settings.engine, smtp_mailer(SmtpSettings.from_env())
    db.write_tx(eng, lambda c: store.payment_failed(c, "acme", "c1", T0, "ap@c1.example", mailer))
    for day in range(1, 21):
        db.write_tx(eng, lambda c, day=day: store.tick_all(c, T0 + day * DAY, mailer))
    subjects = [(to, msg["Subject"]) for to, msg in smtp.messages]
    assert subjects == [
        (["ap@c1.example"], f"Payment reminder {n}: TR7 services of c1 (acme)") for n in (1, 2, 3, 4)
    ] + [(["ap@c1.example"], "TR7 services of c1 (acme) downgraded")]
    assert "2026-10-20T00:00:00Z" in smtp.messages[0][1].get_payload()  # the deadline is in the text
    db.write_tx(eng, lambda c: store.paid(c, "acme", "c1", T0 + 20 * DAY, mailer))
    with db.read_conn(eng) as c:
        events = store.events(c, "acme", "c1")
        _cid, doc = accounting.catalog_for(c, "acme", "2026-10")
        inv = accounting.invoice(c, "acme", "2026-10")
        usage, _ = accounting.own_result(c, "acme", "2026-10")
    assert [e["kind"] for e in reversed(events)] == ["payment_failed"] + ["reminder"] * 4 + [
        "downgraded",
        "paid",
    ]
    assert events[2]["detail"] == "sent to ap@c1.example"
    assert doc["customers"][0]["downgraded"] == [["2026-10-20T00:00:00Z", "2026-10-25T00:00:00Z"]]
    # 744 running hours, minus the 5 downgraded days.
    assert [x["quantity"] for x in inv["lines"]] == [744 - 5 * 24]
    assert inv["total"] == "28.08"  # 624 h x 0.0450
    assert usage["rows"][0]["payg_hours"] == 624 and usage["rows"][0]["active_hours"] == 744


def test_open_downgrade_excludes_the_rest_of_the_month(settings: Any, tools: Any) -> None:
    _month_of_beats(settings, tools)
    eng = settings.engine
    db.write_tx(eng, lambda c: store.payment_failed(c, "acme", "c1", T0, None, None))
    db.write_tx(eng, lambda c: store.tick_all(c, T0 + 17 * DAY, None))
    with db.read_conn(eng) as c:
        inv = accounting.invoice(c, "acme", "2026-10")
        acc, _ = store.load(c, "acme", "c1")
    assert acc.state == m.DOWNGRADED
    assert [x["quantity"] for x in inv["lines"]] == [19 * 24]  # Oct 1-19 billed, from the 20th not


def test_without_smtp_the_reminder_is_recorded_as_not_sent(
    settings: Any, tools: Any, monkeypatch: Any
) -> None:
    monkeypatch.delenv("TR7_SMTP_HOST", raising=False)
    tools.apply(settings, tools.catalog())
    mailer = smtp_mailer(SmtpSettings.from_env())
    db.write_tx(settings.engine, lambda c: store.payment_failed(c, "acme", "c1", T0, "x@y.example", mailer))
    db.write_tx(settings.engine, lambda c: store.tick_all(c, T0 + 3 * DAY, mailer))
    with db.read_conn(settings.engine) as c:
        assert store.events(c, "acme", "c1")[0]["detail"] == "not sent: TR7_SMTP_HOST is not set"


def test_payment_api_roles_and_tenancy(client: Any, settings: Any, tools: Any) -> None:
    tools.apply(settings, tools.catalog())
    tools.apply(settings, tools.catalog("beta", ["z1"], licenses=[]))
    admin, viewer = tools.token(settings, "acme", "admin"), tools.token(settings, "acme", "viewer")
    beta = tools.token(settings, "beta", "admin")

    def post(path: str, tok: str, **kw: Any) -> Any:
        return client.post(f"/v1/providers/{path}", headers={"Authorization": f"Bearer {tok}"}, **kw)

    assert post("acme/customers/c1/payment-failed", viewer).status_code == 403
    assert post("acme/customers/c1/payment-failed", beta).status_code == 403
    assert post("acme/customers/nobody/payment-failed", admin).status_code == 404
    r = post("acme/customers/c1/payment-failed", admin, json={"email": "ap@c1.example"})
    assert r.status_code == 200 and r.json()["state"] == "overdue" and r.json()["email"] == "ap@c1.example"
    got = client.get("/v1/providers/acme/customers/c1/account", headers={"Authorization": f"Bearer {viewer}"})
    assert got.json()["state"] == "overdue" and got.json()["events"][0]["kind"] == "payment_failed"
    assert (
        client.get(
            "/v1/providers/acme/customers/c1/account", headers={"Authorization": f"Bearer {beta}"}
        ).status_code
        == 403
    )
    assert post("acme/customers/c1/paid", admin).json()["state"] == "active"


def test_audit_bundle_carries_the_downgrade_and_verifies(settings: Any, tools: Any, tmp_path: Any) -> None:
    import json

    from audit.verify import verify_bundle
    from collector.export import export

    _month_of_beats(settings, tools)
    eng = settings.engine
    db.write_tx(eng, lambda c: store.payment_failed(c, "acme", "c1", T0))
    db.write_tx(eng, lambda c: store.tick_all(c, T0 + 15 * DAY))
    db.write_tx(eng, lambda c: store.paid(c, "acme", "c1", T0 + 20 * DAY))
    path, agrees = db.write_tx(eng, lambda c: export(c, settings, "acme", "2026-10", tmp_path / "bundle"))
    assert agrees
    catalog = json.loads(next(path.rglob("catalog.json")).read_text())
    assert catalog["customers"][0]["downgraded"] == [["2026-10-20T00:00:00Z", "2026-10-25T00:00:00Z"]]
    invoice = json.loads(next(p for p in path.rglob("invoice.json") if "closed" not in p.parts).read_text())
    assert invoice["total"] == "28.08"
    report = verify_bundle(path, workers=1)
    assert report.ok, [f.to_json() for f in report.errors]


def test_payments_for_a_slashed_id_and_for_a_customer_dropped_while_overdue(
    client: Any, settings: Any, tools: Any
) -> None:
    tools.apply(settings, tools.catalog(customers=["c1", "AT/1001"]))
    admin = {"Authorization": f"Bearer {tools.token(settings, 'acme', 'admin')}"}
    r = client.post("/v1/providers/acme/customers/AT%2F1001/payment-failed", headers=admin)
    assert r.status_code == 200 and r.json()["customer"] == "AT/1001" and r.json()["state"] == "overdue"
    # The customer leaves the catalog while overdue: the payment can still be recorded (and the
    # overdue alert end), a customer never seen stays unknown.
    tools.apply(settings, tools.catalog(customers=["c1"]))
    paid = client.post("/v1/providers/acme/customers/AT%2F1001/paid", headers=admin)
    assert paid.json()["state"] == "active"
    assert client.post("/v1/providers/acme/customers/nobody/paid", headers=admin).status_code == 404


def test_customers_route_lists_the_downgrades_billing_applies(client: Any, settings: Any, tools: Any) -> None:
    tools.apply(settings, tools.catalog())
    admin = {"Authorization": f"Bearer {tools.token(settings, 'acme', 'admin')}"}
    db.write_tx(settings.engine, lambda c: store.payment_failed(c, "acme", "c1", T0))
    db.write_tx(settings.engine, lambda c: store.tick_all(c, T0 + 16 * DAY))
    (c1,) = client.get("/v1/providers/acme/customers", headers=admin).json()
    assert c1["downgraded"] == [["2026-10-20T00:00:00Z", None]]  # 15 days after the failure
    vendor = {"Authorization": f"Bearer {tools.token(settings, None, 'vendor')}"}
    assert "downgraded" not in client.get("/v1/providers/acme/customers", headers=vendor).json()[0]
