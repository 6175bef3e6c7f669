"""apply never rewrites billed history silently: retroactive catalog changes are refused unless
deliberate (docs/collector.md, "Catalog changes and billed history"), on SQLite and PostgreSQL,
through registry.apply_catalog (with an injected clock) and through the real CLI."""

import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from collector import accounting, catalogdiff, db, registry
from collector import schema as s
from collector.ingest import ingest_lines
from protocol.timefmt import format_time, month_bounds, month_of, next_month, parse_time, previous_month

NOW = parse_time("2026-11-15T12:30:00Z")  # the injected clock: mid-hour, mid-month
NOV, OCT = "2026-11", "2026-10"
H = 3600


def _catalog(tools, **extra):
    cat = tools.catalog(**extra)
    cat["rates"]["hourly"].append({"bundle": "pro", "max_bandwidth_mbps": 2000, "price": "0.0900"})
    return cat


def _apply(settings, doc, **kw):
    return db.write_tx(
        settings.engine, lambda c: registry.apply_catalog(c, doc, now=kw.pop("now", NOW), **kw)
    )


def _versions(settings):
    with db.read_conn(settings.engine) as c:
        return c.execute(sa.select(s.catalogs.c.id, s.catalogs.c.retroactive).order_by(s.catalogs.c.id)).all()


def _bill(settings, month=NOV):
    with db.read_conn(settings.engine) as c:
        return accounting.invoice(c, "acme", month)


def _seed(settings, tools, month=NOV, hours=10):
    """The first catalog, then ``hours`` running hours of TR7-0001 from the month's start."""
    cat = _catalog(tools)
    _apply(settings, cat)
    m0 = month_bounds(month)[0]
    agent = tools.Agent()
    tools.enrol(settings, "acme", agent, m0 - 86400)
    lines = [agent.beat(m0 + h * H + 60, {"TR7-0001": "running"}) for h in range(hours)]
    assert {r["status"] for r in ingest_lines(settings.engine, lines)} == {"accepted"}
    return cat


def _refused(settings, doc, months):
    before = (_versions(settings), _bill(settings))
    with pytest.raises(registry.RetroactiveChange) as exc:
        _apply(settings, doc)
    assert "--retroactive" in str(exc.value) and ", ".join(months) in str(exc.value)
    assert (_versions(settings), _bill(settings)) == before  # nothing stored, the bill unchanged
    return [c for c in exc.value.changes if c.retroactive]


def test_first_catalog_is_never_retroactive(settings, tools):
    agent = tools.Agent()
    tools.enrol(settings, "acme", agent, NOW - 40 * 86400)
    ingest_lines(settings.engine, [agent.beat(NOW - 86400, {"TR7-0001": "running"})])
    pid, changes = _apply(settings, _catalog(tools))
    assert pid == "acme" and "license SL-1: added" in changes
    assert not any("RETROACTIVE" in line for line in changes)
    assert [r.retroactive for r in _versions(settings)] == [False]


def test_unchanged_reapply_and_non_billing_members(settings, tools):
    cat = _seed(settings, tools)
    assert _apply(settings, cat) == ("acme", [])
    assert len(_versions(settings)) == 1
    renamed = copy.deepcopy(cat)
    renamed["provider"]["name"] = "Acme Renamed"
    renamed["customers"][0]["name"] = "Other GmbH"
    _pid, changes = _apply(settings, renamed)
    assert changes == ["customer c1: changed", "provider: changed"]  # names: no billing input
    assert [r.retroactive for r in _versions(settings)] == [False, False]


def test_in_place_capacity_edit_before_now_is_refused(settings, tools):
    cat = _seed(settings, tools)
    assert _bill(settings)["total"] == "0.45"
    edited = copy.deepcopy(cat)
    edited["licenses"][0]["capacity"][0]["bandwidth_mbps"] = 1500  # priced at pro/2000 now
    (change,) = _refused(settings, edited, [NOV])
    assert change.line == "license SL-1: changed" and change.months == (NOV,)
    assert "capacity" in change.why and "1500" in change.why
    # A deliberate correction goes through, and the version says so.
    _pid, lines = _apply(settings, edited, retroactive=True)
    assert any(line.startswith("license SL-1: changed  [RETROACTIVE: reprices 2026-11") for line in lines)
    assert [r.retroactive for r in _versions(settings)] == [False, True]
    assert _bill(settings)["total"] == "0.90"


def test_appending_a_capacity_entry_from_now_on(settings, tools):
    cat = _seed(settings, tools)
    entry = {"bundle": "pro", "bandwidth_mbps": 1500, "vservices": 10}
    inside_hour = copy.deepcopy(cat)  # 12:45: the hour in progress (12:00) would be repriced
    inside_hour["licenses"][0]["capacity"].append({"from": "2026-11-15T12:45:00Z", **entry})
    _refused(settings, inside_hour, [NOV])
    earlier = copy.deepcopy(cat)
    earlier["licenses"][0]["capacity"].append({"from": "2026-11-14T00:00:00Z", **entry})
    _refused(settings, earlier, [NOV])
    later = copy.deepcopy(cat)
    later["licenses"][0]["capacity"].append({"from": "2026-11-15T13:00:00Z", **entry})
    _pid, changes = _apply(settings, later)
    assert changes == ["license SL-1: changed"]
    assert [r.retroactive for r in _versions(settings)] == [False, False]
    assert _bill(settings)["total"] == "0.45"


def test_removing_a_license_that_ran_is_refused(settings, tools):
    cat = _seed(settings, tools)
    gone = copy.deepcopy(cat)
    gone["licenses"] = []
    (change,) = _refused(settings, gone, [NOV])
    assert change.line == "license SL-1: removed" and "no longer in force" in change.why
    ended = copy.deepcopy(cat)
    ended["licenses"][0]["end"] = "2026-11-10T00:00:00Z"  # clipped inside the billed past
    _refused(settings, ended, [NOV])
    # Ending it from the next hour on, and a new license from then: nothing billed changes.
    later = copy.deepcopy(cat)
    later["licenses"][0]["end"] = "2026-11-15T13:00:00Z"
    later["licenses"].append({**cat["licenses"][0], "id": "SL-2", "start": "2026-11-15T13:00:00Z"})
    _pid, changes = _apply(settings, later)
    assert changes == ["license SL-2: added", "license SL-1: changed"]


def test_device_day_license_counts_the_day_in_progress(settings, tools):
    cat = _seed(settings, tools)
    cat2 = copy.deepcopy(cat)
    cat2["rates"]["monthly"] = [{"pack": "professional", "price": "12.00"}]
    with pytest.raises(registry.RetroactiveChange):  # a new monthly rate reprices the month
        _apply(settings, cat2)
    _apply(settings, cat2, retroactive=True)
    dd = {
        "id": "SL-9",
        "customer": "c1",
        "instance": "TR7-0009",
        "model": "payg",
        "unit": "device_day",
        "pack": "professional",
        "day_counts": "assigned",
        "start": "2026-11-15T20:00:00Z",  # today, after now: today would count (billing-v1.md §5)
        "end": None,
        "capacity": [],
    }
    today = copy.deepcopy(cat2)
    today["licenses"].append(dd)
    _refused(settings, today, [NOV])
    tomorrow = copy.deepcopy(cat2)
    tomorrow["licenses"].append({**dd, "start": "2026-11-16T00:00:00Z"})
    assert _apply(settings, tomorrow)[1] == ["license SL-9: added"]


def test_rate_policy_bundles_currency_reprice_the_open_months(settings, tools):
    cat = _seed(settings, tools)
    rate = copy.deepcopy(cat)
    rate["rates"]["hourly"][0]["price"] = "0.0500"
    (change,) = _refused(settings, rate, [NOV])
    assert change.line == "hourly rate pro/1000: changed" and "no validity period" in change.why
    for member, value in (
        ("policy", {"gaps": {"mode": "bridge", "max_hours": 2}}),
        ("bundles", ["pro", "basic"]),
        ("provider", {**cat["provider"], "currency": "USD"}),
    ):
        (change,) = _refused(settings, {**cat, member: value}, [NOV])
        assert change.line == f"{member}: changed"
    assert _apply(settings, {**cat, "policy": {}})[1] == ["policy: changed"]  # the same default
    _pid, lines = _apply(settings, rate, retroactive=True)
    assert "RETROACTIVE" in lines[0]
    assert _bill(settings)["total"] == "0.50"


def test_downgrades_and_platform_licenses_in_the_past(settings, tools):
    cat = _seed(settings, tools)
    down = copy.deepcopy(cat)
    down["customers"][0]["downgraded"] = [["2026-11-01T05:00:00Z", "2026-11-02T00:00:00Z"]]
    (change,) = _refused(settings, down, [NOV])
    assert change.line == "customer c1: changed"
    future = copy.deepcopy(cat)
    future["customers"][0]["downgraded"] = [["2026-11-20T00:00:00Z", None]]
    assert _apply(settings, future)[1] == ["customer c1: changed"]
    pl = copy.deepcopy(future)
    pl["platform_licenses"][0]["valid_to"] = "2026-11-03T00:00:00Z"
    (change,) = _refused(settings, pl, [NOV])
    assert change.line == "platform license PL-1: changed" and "2026-11-03T00:00:00Z" in change.why
    pl["platform_licenses"][0]["valid_to"] = "2026-12-01T00:00:00Z"
    assert _apply(settings, pl)[1] == ["platform license PL-1: changed"]


def test_downgrades_recorded_by_accounts_are_billing_facts_already(settings, tools):
    from collector.accounts.store import account_periods

    cat = _seed(settings, tools)
    period = (parse_time("2026-11-03T00:00:00Z"), parse_time("2026-11-05T00:00:00Z"))
    db.write_tx(
        settings.engine,
        lambda c: c.execute(
            account_periods.insert().values(provider="acme", customer="c1", start=period[0], end=period[1])
        ),
    )
    written = copy.deepcopy(cat)  # the catalog now says what billing already applied
    written["customers"][0]["downgraded"] = [[format_time(period[0]), format_time(period[1])]]
    assert _apply(settings, written)[1] == ["customer c1: changed"]
    longer = copy.deepcopy(written)
    longer["customers"][0]["downgraded"][0][1] = "2026-11-06T00:00:00Z"
    (change,) = _refused(settings, longer, [NOV])
    assert "2026-11-05T00:00:00Z" in change.why


def test_a_change_inside_a_closed_month_only_is_accepted(settings, tools):
    cat = _seed(settings, tools, month=OCT)
    db.write_tx(settings.engine, lambda c: accounting.close(c, settings, "acme", OCT, now=NOW))

    def frozen():
        with db.read_conn(settings.engine) as c:
            row = c.execute(sa.select(s.closes).where(s.closes.c.month == OCT)).one()
            return row._asdict(), accounting.invoice(c, "acme", OCT), accounting.own_result(c, "acme", OCT)

    before = frozen()
    assert before[1]["total"] == "0.45"
    with db.read_conn(settings.engine) as c:
        assert catalogdiff.billed_past(c, "acme", NOW).months == (NOV,)
    cap = cat["licenses"][0]["capacity"]
    inside = copy.deepcopy(cat)  # a dearer capacity from Oct 5 to the end of October only
    inside["licenses"][0]["capacity"] = [
        cap[0],
        {**cap[0], "from": "2026-10-05T00:00:00Z", "bandwidth_mbps": 1500},
        {**cap[0], "from": "2026-11-01T00:00:00Z"},
    ]
    assert _apply(settings, inside)[1] == ["license SL-1: changed"]
    assert frozen() == before
    beyond = copy.deepcopy(inside)  # the same, running on into November: reprices November only
    del beyond["licenses"][0]["capacity"][2]
    (change,) = _refused(settings, beyond, [NOV])
    assert change.months == (NOV,)
    rate = copy.deepcopy(inside)
    rate["rates"]["hourly"][0]["price"] = "0.0500"
    _apply(settings, rate, retroactive=True)  # November is repriced; October keeps its catalog
    assert frozen() == before


def test_window_of_open_months(settings, tools):
    _apply(settings, _catalog(tools))
    with db.read_conn(settings.engine) as c:
        assert catalogdiff.billed_past(c, "acme", NOW).months == (NOV,)  # no log: now's month
    agent = tools.Agent()
    tools.enrol(settings, "acme", agent, parse_time("2026-08-01T00:00:00Z"))
    ingest_lines(
        settings.engine,
        [
            agent.beat(parse_time(t), {"TR7-0001": "running"})
            for t in ("2026-08-10T00:00:00Z", "2026-10-10T00:00:00Z")
        ],
    )
    db.write_tx(settings.engine, lambda c: accounting.close(c, settings, "acme", OCT, now=NOW))
    with db.read_conn(settings.engine) as c:
        past = catalogdiff.billed_past(c, "acme", NOW)
    assert past.months == ("2026-08", "2026-09", NOV)  # September: no log, still open, in between
    assert past.spans(H)[-1] == (NOV, month_bounds(NOV)[0], parse_time("2026-11-15T13:00:00Z"))


def test_migration_0005_adds_the_column_to_an_old_database(settings, tools):
    from alembic import command

    _apply(settings, _catalog(tools))
    cfg = db.alembic_config(settings.engine.url.render_as_string(hide_password=False))
    for target in ("0004_leaves_chain_index", "head"):
        with settings.engine.connect() as conn:
            cfg.attributes["connection"] = conn
            (command.downgrade if target.startswith("0004") else command.upgrade)(cfg, target)
            conn.commit()
        with settings.engine.connect() as conn:
            cols = {c["name"] for c in sa.inspect(conn).get_columns("catalogs")}
        assert ("retroactive" in cols) == (target == "head")
    assert [r.retroactive for r in _versions(settings)] == [False]


# --- the real CLI ---------------------------------------------------------------------------------


def _cli(data: Path, db_url: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TR7_COLLECTOR_DB": db_url, "TR7_COLLECTOR_ORIGIN": "cli.test"}
    exe = Path(sys.executable).with_name("tr7-collector")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "collector.cli"]
    return subprocess.run(
        [*cmd, *args, "--data-dir", str(data)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_cli_apply_refuses_retroactive_changes(tmp_path, db_url, tools):
    data, f = tmp_path / "data", tmp_path / "catalog.json"

    def apply(doc, *flags):
        f.write_text(json.dumps(doc))
        return _cli(data, db_url, "apply", str(f), *flags)

    def bill(month):
        r = _cli(data, db_url, "bill", "--provider", "acme", "--month", month)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    cat = _catalog(tools)
    r = apply(cat)
    assert r.returncode == 0 and "license SL-1: added" in r.stdout and "RETROACTIVE" not in r.stdout
    m = previous_month(month_of(int(time.time())))
    m0, m1 = month_bounds(m)
    key = tools.Agent()
    r = _cli(
        data,
        db_url,
        "agent",
        "add",
        "--provider",
        "acme",
        "--name",
        "dc1",
        "--public-key",
        key.key.public_b64,
        "--enrolled-at",
        format_time(m0 - 86400),
    )
    assert r.returncode == 0, r.stderr
    jws = tmp_path / "spool.jws"
    jws.write_text("".join(key.beat(m0 + h * H + 60, {"TR7-0001": "running"}) + "\n" for h in range(10)))
    assert _cli(data, db_url, "import", str(jws)).returncode == 0
    assert bill(m)["total"] == "0.45"

    edited = copy.deepcopy(cat)
    edited["licenses"][0]["capacity"][0]["bandwidth_mbps"] = 1500
    r = apply(edited)
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"license SL-1: changed  [RETROACTIVE: reprices {m}" in r.stdout
    assert "--retroactive" in r.stderr and "nothing stored" in r.stderr
    assert bill(m)["total"] == "0.45"
    assert "provider acme: no change" in apply(cat).stdout  # the refused version was not stored

    appended = copy.deepcopy(cat)
    appended["licenses"][0]["capacity"].append(
        {
            "from": format_time(month_bounds(next_month(month_of(int(time.time()))))[0]),
            "bundle": "pro",
            "bandwidth_mbps": 1500,
            "vservices": 10,
        }
    )
    r = apply(appended)
    assert r.returncode == 0 and "license SL-1: changed" in r.stdout and "RETROACTIVE" not in r.stdout

    r = apply({**appended, "licenses": []})
    assert r.returncode == 2 and "license SL-1: removed  [RETROACTIVE" in r.stdout

    rate = copy.deepcopy(appended)
    rate["rates"]["hourly"][0]["price"] = "0.0500"
    r = apply(rate)
    assert r.returncode == 2 and "hourly rate pro/1000: changed  [RETROACTIVE" in r.stdout
    assert bill(m)["total"] == "0.45"
    r = apply(rate, "--retroactive")
    assert r.returncode == 0 and "hourly rate pro/1000: changed  [RETROACTIVE" in r.stdout
    assert bill(m)["total"] == "0.50"

    r = _cli(data, db_url, "close", "--provider", "acme", "--month", m)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "before"
    assert _cli(data, db_url, "export", "--provider", "acme", "--month", m, "--out", str(out)).returncode == 0
    billed = bill(m)
    inside = copy.deepcopy(rate)  # a dearer capacity inside the closed month only
    cap = inside["licenses"][0]["capacity"]
    cap[1:1] = [
        {**cap[0], "from": format_time(m0 + 86400), "bandwidth_mbps": 1500},
        {**cap[0], "from": format_time(m1)},
    ]
    r = apply(inside)
    assert r.returncode == 0 and "license SL-1: changed" in r.stdout and "RETROACTIVE" not in r.stdout
    assert bill(m) == billed
    after = tmp_path / "after"
    assert (
        _cli(data, db_url, "export", "--provider", "acme", "--month", m, "--out", str(after)).returncode == 0
    )
    for name in ("closed/usage.json", "closed/invoice.json", "closed/checkpoint", "invoice.json"):
        assert (after / name).read_bytes() == (out / name).read_bytes(), name


def test_the_served_bill_follows_a_downgrade_and_a_payment(settings, tools):
    """The read API's invoice is cached by what it depends on: a downgrade recorded by the accounts
    tick (or a payment ending one) is one of those, though the catalog id stays the same."""
    from collector.accounts import store

    _seed(settings, tools, hours=48)

    def served():
        with db.read_conn(settings.engine) as c:
            return accounting.own_result(c, "acme", NOV)[1]["total"]

    assert served() == "2.16"  # 48 h at 0.0450
    m0 = month_bounds(NOV)[0]
    db.write_tx(settings.engine, lambda c: store.payment_failed(c, "acme", "c1", m0 - 15 * 86400))
    db.write_tx(settings.engine, lambda c: store.tick_all(c, m0 + 12 * H))  # downgraded from m0 on
    with db.read_conn(settings.engine) as c:
        assert accounting.full_result(c, "acme", NOV)[1]["total"] == served() == "0.00"
    db.write_tx(settings.engine, lambda c: store.paid(c, "acme", "c1", m0 + 24 * H))
    with db.read_conn(settings.engine) as c:
        assert accounting.full_result(c, "acme", NOV)[1]["total"] == served() == "1.08"


def test_the_currency_stays_once_a_month_is_closed(settings, tools) -> None:
    # Billing review: October closed in EUR, a USD catalog applied for November, then October's
    # late heartbeats: November's USD invoice added a line priced in EUR.
    db.write_tx(settings.engine, lambda c: registry.apply_catalog(c, tools.catalog(), now=0))
    usd = copy.deepcopy(tools.catalog())
    usd["provider"]["currency"] = "USD"
    db.write_tx(settings.engine, lambda c: registry.apply_catalog(c, usd, now=0))  # nothing closed yet
    eur = tools.catalog()
    db.write_tx(settings.engine, lambda c: registry.apply_catalog(c, eur, now=0))
    db.write_tx(settings.engine, lambda c: accounting.close(c, settings, "acme", "2026-10",
                                                            now=time.time_ns() // 10**9))
    with pytest.raises(registry.RegistryError, match=r"currency is EUR, and 2026-10 is closed in it"):
        db.write_tx(settings.engine, lambda c: registry.apply_catalog(c, usd))
    with db.read_conn(settings.engine) as c:
        assert registry.latest_catalog(c, "acme")[1]["provider"]["currency"] == "EUR"  # nothing stored
