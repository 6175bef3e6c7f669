"""Alerts over the read API: fork, break, clock going back, clone, unlicensed, over-capacity, silence."""

import time

from collector import accounting, credentials, db, registry
from collector.ingest import ingest_lines
from protocol.timefmt import format_time, month_bounds, month_of, previous_month


def test_alerts_and_agent_health(client, settings, tools):
    m = previous_month(month_of(int(time.time())))
    m0 = month_bounds(m)[0]
    fixed = {
        "id": "SL-F",
        "customer": "c1",
        "instance": "TR7-0003",
        "model": "fixed",
        "unit": "hour",
        "start": "2026-01-01T00:00:00Z",
        "end": None,
        "capacity": [{"from": "2026-01-01T00:00:00Z", "bundle": "basic", "bandwidth_mbps": 100}],
    }
    cat = tools.catalog()
    cat["licenses"].append(fixed)
    db.write_tx(settings.engine, lambda c: registry.apply_catalog(c, cat))
    a, b, quiet = tools.Agent("a"), tools.Agent("b"), tools.Agent("quiet")
    for ag in (a, b, quiet):
        tools.enrol(settings, "acme", ag, m0 - 86400)
    h = m0 + 5 * 3600
    lines = [
        a.beat(h + 60, {"TR7-0001": "running"}, vm="vm-a"),
        b.beat(h + 120, {"TR7-0001": "running"}, vm="vm-b"),  # same instance, other vm, same hour
        b.beat(h + 180, {"TR7-0002": "running"}),  # no license
        b.beat(h + 240, {"TR7-0003": "running"}, capacity={"bundle": "pro", "bandwidth_mbps": 100}),
    ]
    # a's host restored from a snapshot: seq 2 signed twice with different content (fork) ...
    seq2_prev, seq2 = a.prev, a.seq
    lines.append(a.beat(h + 600, {"TR7-0001": "running"}, vm="vm-a"))
    a.seq, a.prev = seq2, seq2_prev
    lines.append(a.beat(h + 660, {"TR7-0001": "stopped"}, vm="vm-a"))
    # ... then one whose prev does not match (break), then one whose time goes back
    lines.append(a.beat(h + 700, {"TR7-0001": "running"}, vm="vm-a"))
    a.prev = "f" * 64
    lines.append(a.beat(h + 900, {"TR7-0001": "running"}, vm="vm-a"))
    lines.append(a.beat(h + 800, {"TR7-0001": "running"}, vm="vm-a"))
    r = client.post("/v1/heartbeats", content="\n".join(lines), headers={"Content-Type": "text/plain"})
    assert {x["status"] for x in r.json()["results"]} == {"accepted"}
    tok = db.write_tx(
        settings.engine, lambda c: credentials.new_api_token(c, "acme", "viewer", int(time.time()))
    )
    auth = {"Authorization": f"Bearer {tok}"}
    found = client.get("/v1/providers/acme/alerts", params={"month": m}, headers=auth).json()["alerts"]
    kinds = {x["type"] for x in found}
    assert kinds == {"fork", "break", "clock_back", "clone", "unlicensed", "over_capacity"}
    clone = next(x for x in found if x["type"] == "clone")
    assert clone["instance"] == "TR7-0001" and clone["vms"] == ["vm-a", "vm-b"]
    assert clone["hour"] == format_time(h)
    assert next(x for x in found if x["type"] == "unlicensed")["instance"] == "TR7-0002"
    assert next(x for x in found if x["type"] == "over_capacity")["license"] == "SL-F"
    assert next(x for x in found if x["type"] == "fork")["seq"] == 2
    health = client.get("/v1/providers/acme/agents", params={"month": m}, headers=auth).json()["agents"]
    by = {x["kid"]: x for x in health}
    assert not by[a.kid]["healthy"] and by[a.kid]["chain"]["forks"] == [2]
    # Silence is about now: the current month's alerts and agents say it, a past month's do not
    assert not by[quiet.kid]["silent"]
    now = {"month": month_of(int(time.time()))}
    found = client.get("/v1/providers/acme/alerts", params=now, headers=auth).json()["alerts"]
    assert {x["agent"] for x in found if x["type"] == "silent_agent"} >= {quiet.kid}
    health = client.get("/v1/providers/acme/agents", params=now, headers=auth).json()["agents"]
    by = {x["kid"]: x for x in health}
    assert by[quiet.kid]["last_heartbeat"] is None and by[quiet.kid]["silent"]
    # a month before the keys were enrolled has none of them; an unknown provider is a 404
    early = client.get("/v1/providers/acme/agents", params={"month": "2020-01"}, headers=auth).json()
    assert early["agents"] == []
    vendor = db.write_tx(settings.engine, lambda c: credentials.new_api_token(c, None, "vendor", 0))
    for route in ("alerts", "agents", "instances"):  # (invoices: never the vendor's, a 403)
        r = client.get(f"/v1/providers/nobody/{route}", headers={"Authorization": f"Bearer {vendor}"})
        assert r.status_code == 404, route


def test_last_heartbeat_is_the_latest_of_any_month(settings, tools):
    from collector import alerts
    from collector.ingest import ingest_lines

    m = previous_month(month_of(int(time.time())))
    m0, m1 = month_bounds(m)
    a = tools.Agent("a")
    before = month_bounds(previous_month(m))[0]
    tools.enrol(settings, "acme", a, before - 86400)
    # The latest time is in the later month even though a beat of the earlier month came after it
    # (and carries the highest seq): the key's latest month, then its latest time in that month.
    times = [before + 3600, m0 + 7200, m0 + 3600, before + 7200]
    lines = [a.beat(t, {}) for t in times]

    assert {r["status"] for r in ingest_lines(settings.engine, lines, now=m1)} == {"accepted"}
    with db.read_conn(settings.engine) as c:
        (health,) = alerts.agent_health(c, "acme", m, m0 + 7200 + 600)
    assert health["last_heartbeat"] == format_time(m0 + 7200) and health["last_seq"] == 2
    assert not health["silent"]


def test_a_stopped_copy_is_no_clone_and_an_unpriceable_month_still_has_its_alerts(client, settings, tools):
    m = previous_month(month_of(int(time.time())))
    m0 = month_bounds(m)[0]
    cat = tools.catalog()
    cat["licenses"][0]["capacity"][0]["bandwidth_mbps"] = 5000  # no hourly rate goes that high
    db.write_tx(settings.engine, lambda c: registry.apply_catalog(c, cat))
    a, b = tools.Agent("a"), tools.Agent("b")
    for ag in (a, b):
        tools.enrol(settings, "acme", ag, m0 - 86400)
    h = m0 + 5 * 3600
    lines = [
        a.beat(h + 60, {"TR7-0001": "running"}, vm="vm-a"),
        b.beat(h + 120, {"TR7-0001": "stopped"}, vm="vm-b"),  # a powered-off clone: no clone alert
        a.beat(h + 3600, {"TR7-0009": "stopped"}, vm="vm-c"),
        b.beat(h + 3660, {"TR7-0009": "stopped"}, vm="vm-d"),  # both stopped: none either
        a.beat(h + 7200, {"TR7-0001": "running"}, vm="vm-a"),
        b.beat(h + 7260, {"TR7-0001": "running"}, vm="vm-b"),  # both running: the clone
        a.beat(h + 10800, {"TR7-0042": "running"}, vm="vm-x"),  # no license: its alert stays
    ]
    r = client.post("/v1/heartbeats", content="\n".join(lines), headers={"Content-Type": "text/plain"})
    assert {x["status"] for x in r.json()["results"]} == {"accepted"}
    tok = db.write_tx(settings.engine, lambda c: credentials.new_api_token(c, "acme", "viewer", 0))
    auth = {"Authorization": f"Bearer {tok}"}
    r = client.get("/v1/providers/acme/alerts", params={"month": m}, headers=auth)
    assert r.status_code == 200
    found = r.json()["alerts"]
    clones = [(x["instance"], x["hour"]) for x in found if x["type"] == "clone"]
    assert clones == [("TR7-0001", format_time(h + 7200))]
    [priced] = [x for x in found if x["type"] == "pricing_error"]
    assert priced["license"] == "SL-1" and "no rates.hourly entry" in priced["detail"]
    # the licensing alerts need no price: they vanished with the invoice
    assert {"type": "unlicensed", "instance": "TR7-0042", "hours": 1} in found
    r = client.get(f"/v1/providers/acme/invoices/{m}", headers=auth)
    assert r.status_code == 409 and "no rates.hourly entry" in r.json()["detail"]


def test_hours_only_a_forks_copies_gave_are_not_active_on_the_api(client, settings, tools):
    from collector import accounting

    m = previous_month(month_of(int(time.time())))
    m0 = month_bounds(m)[0]
    db.write_tx(settings.engine, lambda c: registry.apply_catalog(c, tools.catalog()))
    a = tools.Agent("a")
    tools.enrol(settings, "acme", a, m0 - 86400)
    h = m0 + 10 * 3600
    first = a.beat(h, {"TR7-0001": "running"})
    seq2_prev, seq2 = a.prev, a.seq
    copy1 = a.beat(h + 3600, {"TR7-0001": "running"})  # seq 2: the only evidence of 11:00 ...
    a.seq, a.prev = seq2, seq2_prev
    copy2 = a.beat(h + 3700, {"TR7-0001": "running"})  # ... signed twice (a restored snapshot)
    rest = [a.beat(h + 7200 + 60 * i, {"TR7-0001": "running"}) for i in range(2)]
    for batch in ([first, copy1], [copy2, *rest]):  # the copies arrive in different batches
        ingest_lines(settings.engine, batch)
    tok = db.write_tx(settings.engine, lambda c: credentials.new_api_token(c, "acme", "viewer", 0))
    got = client.get("/v1/providers/acme/instances", params={"month": m},
                     headers={"Authorization": f"Bearer {tok}"}).json()["instances"]
    day = format_time(m0 + 10 * 3600)[:10]
    assert got == [{"instance": "TR7-0001", "days": {day: {"active_hours": 2, "seen_hours": 2}}}]
    with db.read_conn(settings.engine) as c:
        usage, _inv = accounting.own_result(c, "acme", m)
    assert usage["rows"][0]["active_hours"] == 2  # the bill counts 10:00 and 12:00, as the API


def _last_month_agent(settings, tools):
    """(last month, its first second, an agent enrolled a week before it) of a boundary test."""
    m = previous_month(month_of(int(time.time())))
    m0 = month_bounds(m)[0]
    a = tools.Agent("a")
    tools.enrol(settings, "acme", a, m0 - 7 * 86400)
    return m, m0, a


def test_a_fork_and_a_clock_back_across_the_month_boundary_are_alerts(client, settings, tools):
    from collector import alerts

    m, m0, a = _last_month_agent(settings, tools)
    october = [a.beat(m0 - 3600 * (6 - i), {"TR7-0001": "running"}) for i in range(2)]
    snapshot = a.seq, a.prev  # the host's snapshot, taken before seq 3
    october += [a.beat(m0 - 3600 * (4 - i), {"TR7-0001": "running"}) for i in range(4)]  # seq 3..6
    a.seq, a.prev = snapshot  # restored: seq 3 and 4 are signed again, in the month
    month = [a.beat(m0 + 3600 * i, {"TR7-0001": "running"}) for i in range(2)]
    # On another key, the clock goes back across the boundary: seq 2 and 3 are in the month
    # before although seq 1 is in the month (no fork: each seq is in one month only).
    b = tools.Agent("b")
    tools.enrol(settings, "acme", b, m0 - 7 * 86400)
    late = [b.beat(m0 + 300, {"TR7-0002": "running"}), b.beat(m0 - 300, {"TR7-0002": "running"}),
            b.beat(m0 - 240, {"TR7-0002": "running"}), b.beat(m0 + 360, {"TR7-0002": "running"})]
    # A third key crosses the boundary forwards only: nothing to report.
    c = tools.Agent("c")
    tools.enrol(settings, "acme", c, m0 - 7 * 86400)
    plain = [c.beat(m0 - 60, {"TR7-0003": "running"}), c.beat(m0 + 60, {"TR7-0003": "running"})]
    results = ingest_lines(settings.engine, october + month + late + plain)
    assert {r["status"] for r in results} == {"accepted"}
    with db.read_conn(settings.engine) as conn:
        found = alerts.across_months(conn, "acme", m)
        everything = alerts.alerts(conn, "acme", m, int(time.time()))
    want = sorted([
        {"type": "fork_across_months", "agent": a.kid, "month_before": previous_month(m), "seqs": [3, 4]},
        {"type": "clock_back_across_months", "agent": b.kid, "month_before": previous_month(m), "seqs": [2]},
    ], key=lambda x: x["agent"])
    assert found == want
    assert all(x in everything for x in want)
    # The month before is not blamed for the month after's boundary.
    with db.read_conn(settings.engine) as conn:
        assert alerts.across_months(conn, "acme", previous_month(m)) == []


def test_a_break_behind_a_frozen_anchor_is_an_alert(client, settings, tools):
    """The month before's last heartbeats arrive after the month is closed (its anchors frozen at
    the close): the link from them to the month's first heartbeat is checked for the alert."""
    from collector import accounting, alerts, evidence

    db.write_tx(settings.engine, lambda c: registry.apply_catalog(c, tools.catalog()))
    m, m0, a = _last_month_agent(settings, tools)
    on_time = [a.beat(m0 - 3600 * (6 - i), {"TR7-0001": "running"}) for i in range(3)]  # seq 1..3
    late = [a.beat(m0 - 3600 * (3 - i), {"TR7-0001": "running"}) for i in range(2)]  # seq 4, 5
    a.prev = "99" * 32  # seq 6 does not chain to seq 5
    month = [a.beat(m0 + 3600 * i, {"TR7-0001": "running"}) for i in range(2)]  # seq 6, 7
    assert {r["status"] for r in ingest_lines(settings.engine, on_time + month)} == {"accepted"}
    db.write_tx(settings.engine, lambda c: accounting.close(c, settings, "acme", m, now=int(time.time())))
    assert {r["status"] for r in ingest_lines(settings.engine, late)} == {"accepted"}
    with db.read_conn(settings.engine) as c:
        rules = evidence.chain_analysis(c, "acme", m).reports[a.kid].to_json()
        found = alerts.across_months(c, "acme", m)
    assert rules["breaks"] == [] and rules["gaps"] == [[4, 5]]  # the frozen anchor is seq 3
    assert found == [{"type": "break_across_months", "agent": a.kid, "month_before": previous_month(m),
                      "seqs": [6]}]


def test_a_late_anchor_at_the_last_seq_leaves_the_months_alerts_readable(client, settings, tools):
    """seq may be 2^63-1 (heartbeat-v1.md §2): the link after it is not looked for (it would not
    fit a BIGINT: the alerts of the month and its overview answered 500)."""
    from collector import accounting, alerts
    from protocol.payload import MAX_INT

    db.write_tx(settings.engine, lambda c: registry.apply_catalog(c, tools.catalog()))
    m, m0, a = _last_month_agent(settings, tools)
    on_time = [a.beat(m0 - 3600 * (6 - i), {"TR7-0001": "running"}) for i in range(3)]  # seq 1..3
    month = [a.beat(m0 + 3600 * i, {"TR7-0001": "running"}) for i in range(2)]  # seq 4, 5
    assert {r["status"] for r in ingest_lines(settings.engine, on_time + month)} == {"accepted"}
    db.write_tx(settings.engine, lambda c: accounting.close(c, settings, "acme", m, now=int(time.time())))
    a.seq = MAX_INT
    last = a.beat(m0 - 1800, {"TR7-0001": "running"})
    assert ingest_lines(settings.engine, [last])[0]["status"] == "accepted"
    with db.read_conn(settings.engine) as c:
        # the month's seqs 4 and 5 come after the month before's 2^63-1 in time: that is said
        assert alerts.across_months(c, "acme", m) == [{"type": "clock_back_across_months", "agent": a.kid,
                                                       "month_before": previous_month(m), "seqs": [MAX_INT]}]
    token = db.write_tx(settings.engine, lambda c: credentials.new_api_token(c, "acme", "viewer", 0))
    r = client.get(f"/v1/providers/acme/alerts?month={m}", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200


def test_no_boundary_alert_for_what_the_rules_see(client, settings, tools):
    """An open month's anchor is the latest: its break is the rules' own (quarantined), not repeated."""
    from collector import alerts, evidence

    m, m0, a = _last_month_agent(settings, tools)
    before = [a.beat(m0 - 3600 * (6 - i), {"TR7-0001": "running"}) for i in range(5)]
    a.prev = "99" * 32
    month = [a.beat(m0 + 3600 * i, {"TR7-0001": "running"}) for i in range(2)]
    assert {r["status"] for r in ingest_lines(settings.engine, before + month)} == {"accepted"}
    with db.read_conn(settings.engine) as c:
        assert evidence.chain_analysis(c, "acme", m).reports[a.kid].to_json()["breaks"] == [6]
        assert alerts.across_months(c, "acme", m) == []


def test_a_clone_running_for_hours_is_one_alert_per_run(client, settings, tools):
    """One alert per run of consecutive hours (across midnight too), not one per hour: a month of
    2,000 cloned instances was 1.6 million alerts in one response."""
    from collector import alerts

    m, m0, a = _last_month_agent(settings, tools)
    b = tools.Agent("b")
    tools.enrol(settings, "acme", b, m0 - 7 * 86400)
    start = m0 + 86400 + 21 * 3600  # day 2, 21:00 .. day 3, 02:00 (5 hours), then day 3, 05:00
    beats = []
    for h in [0, 1, 2, 3, 4, 8]:
        beats += [a.beat(start + h * 3600 + 60, {"TR7-0001": "running"}, vm="vm-a"),
                  b.beat(start + h * 3600 + 120, {"TR7-0001": "running"}, vm="vm-b")]
    assert {r["status"] for r in ingest_lines(settings.engine, beats)} == {"accepted"}
    with db.read_conn(settings.engine) as c:
        found = alerts.clones(c, "acme", m)
    assert found == [
        {"type": "clone", "instance": "TR7-0001", "hour": format_time(start),
         "until": format_time(start + 5 * 3600), "hours": 5, "vms": ["vm-a", "vm-b"]},
        {"type": "clone", "instance": "TR7-0001", "hour": format_time(start + 8 * 3600),
         "until": format_time(start + 9 * 3600), "hours": 1, "vms": ["vm-a", "vm-b"]},
    ]


def test_a_proxmox_migration_is_no_clone_but_a_longer_overlap_is(client, settings, tools):
    """Proxmox's vm is node/vmid, and a VMID is unique in its cluster: a live migration moves
    pve1/100 to pve2/100 and its hour saw both (every migration was a clone alert). Two hours at
    most; three hours of the same VMID on two nodes, or another vmid, is still a clone."""
    from collector import alerts

    m, m0, a = _last_month_agent(settings, tools)
    start = m0 + 86400
    beats = [a.beat(start + 60, {"TR7-0001": "running"}, vm="pve1/100"),
             a.beat(start + 1800, {"TR7-0001": "running"}, vm="pve2/100")]  # migrated within the hour
    b = tools.Agent("b")
    tools.enrol(settings, "acme", b, m0 - 7 * 86400)
    for h in range(3):  # the same VMID on two clusters' nodes for three hours: a copy
        t = start + (10 + h) * 3600
        beats += [a.beat(t + 60, {"TR7-0002": "running"}, vm="pve1/100"),
                  b.beat(t + 120, {"TR7-0002": "running"}, vm="pve7/100")]
    beats += [a.beat(start + 20 * 3600 + 60, {"TR7-0003": "running"}, vm="pve1/100"),
              b.beat(start + 20 * 3600 + 120, {"TR7-0003": "running"}, vm="pve2/101")]  # another VM
    assert {r["status"] for r in ingest_lines(settings.engine, beats)} == {"accepted"}
    with db.read_conn(settings.engine) as c:
        found = {(x["instance"], x["hours"]) for x in alerts.clones(c, "acme", m)}
    assert found == {("TR7-0002", 3), ("TR7-0003", 1)}


def test_the_api_serves_agents_and_alerts_from_the_pages_cache(client, settings, tools, monkeypatch):
    """/agents and /alerts recomputed the month's chains from every leaf on each request (2.7 s at
    1.7 million heartbeats); they now share the pages' cache: unchanged data, no recomputation."""
    from collector import alerts, credentials

    m, m0, a = _last_month_agent(settings, tools)
    ingest_lines(settings.engine, [a.beat(m0 + 3600, {"TR7-0001": "running"})])
    tok = db.write_tx(settings.engine, lambda c: credentials.new_api_token(c, "acme", "viewer", 0))
    auth = {"Authorization": f"Bearer {tok}"}
    calls = []
    real = alerts.agent_health
    monkeypatch.setattr(alerts, "agent_health", lambda *a, **k: calls.append(1) or real(*a, **k))
    for _ in range(3):
        assert client.get(f"/v1/providers/acme/alerts?month={m}", headers=auth).status_code == 200
        agents = client.get(f"/v1/providers/acme/agents?month={m}", headers=auth).json()["agents"]
        assert agents[0]["kid"] == a.kid
    assert len(calls) == 1


def _one_running_beat(client, settings, tools, cat, at):
    """``cat`` applied, agent "a" enrolled the day before its month, one heartbeat of TR7-0001
    running at ``at`` over HTTP: (the agent, a viewer's Authorization header)."""
    db.write_tx(settings.engine, lambda c: registry.apply_catalog(c, cat))
    a = tools.Agent("a")
    tools.enrol(settings, "acme", a, month_bounds(month_of(at))[0] - 86400)
    r = client.post("/v1/heartbeats", content=a.beat(at, {"TR7-0001": "running"}),
                    headers={"Content-Type": "text/plain"})
    assert r.json()["results"][0]["status"] == "accepted"
    tok = db.write_tx(settings.engine, lambda c: credentials.new_api_token(c, "acme", "viewer", 0))
    return a, {"Authorization": f"Bearer {tok}"}


def test_the_api_metrics_and_overview_list_the_same_alerts(client, settings, tools):
    """PAYG hours outside every platform license and an overdue account: /alerts and /metrics
    listed neither, though the overview did (each had its own list)."""
    from prometheus_client.parser import text_string_to_metric_families

    from collector.accounts import store as acc_store
    from collector.web import data

    now = int(time.time())
    m, m0 = month_of(now), month_bounds(month_of(now))[0]
    cat = tools.catalog()
    cat["platform_licenses"][0]["valid_to"] = format_time(m0)  # ends as the month begins
    db.write_tx(settings.engine, lambda c: acc_store.payment_failed(c, "acme", "c1", m0 + 60))
    a, auth = _one_running_beat(client, settings, tools, cat, m0 + 120)
    found = client.get("/v1/providers/acme/alerts", params={"month": m}, headers=auth).json()["alerts"]
    assert {"type": "no_platform_license", "instance": "TR7-0001", "license": "SL-1",
            "customer": "c1"} in found
    state = "account_overdue" if now < m0 + 60 + 15 * 86400 else "account_downgraded"
    assert {"type": state, "customer": "c1", "since": format_time(m0 + 60)} in found
    admin = db.write_tx(settings.engine, lambda c: credentials.new_api_token(c, "acme", "admin", 0))
    scraped = client.get("/metrics", headers={"Authorization": f"Bearer {admin}"}).text
    counts = {smp.labels["type"]: smp.value for fam in text_string_to_metric_families(scraped)
              for smp in fam.samples if smp.name == "tr7_collector_alerts"}
    assert counts["no_platform_license"] == 1 and counts[state] == 1
    # The vendor sees every provider's alerts, never a customer's payment state (roles.ACCOUNTS)
    vtok = db.write_tx(settings.engine, lambda c: credentials.new_api_token(c, None, "vendor", 0))
    vendor = {"Authorization": f"Bearer {vtok}"}
    theirs = client.get("/v1/providers/acme/alerts", params={"month": m}, headers=vendor).json()["alerts"]
    assert sorted(x["type"] for x in theirs) == sorted(x["type"] for x in found if x["type"] != state)
    scraped = client.get("/metrics", headers=vendor).text
    assert 'type="no_platform_license"' in scraped and 'type="account_' not in scraped
    with db.read_conn(settings.engine) as c:
        shown = data.provider_alerts(c, "acme", m, int(time.time()))
    assert sorted(x["type"] for x in shown) == sorted(x["type"] for x in found)
    # the overview names an agent by its name, the API by its kid
    silent = [x["agent"] for x in found if x["type"] == "silent_agent"]
    assert [x["agent"] for x in shown if x["type"] == "silent_agent"] == [a.name for _ in silent]


def test_the_apis_licensing_alerts_follow_a_new_catalog_at_once(client, settings, tools):
    """The bill's alerts came from a stale-while-revalidate cache for a while: after a catalog that
    cannot price the month, /invoices said 409 and /alerts had no pricing_error yet."""
    m = previous_month(month_of(int(time.time())))
    m0 = month_bounds(m)[0]
    _a, auth = _one_running_beat(client, settings, tools, tools.catalog(), m0 + 60)
    url = "/v1/providers/acme/alerts"
    assert not [x for x in client.get(url, params={"month": m}, headers=auth).json()["alerts"]
                if x["type"] == "pricing_error"]
    cat = tools.catalog()
    cat["licenses"][0]["capacity"][0]["bandwidth_mbps"] = 5000  # no hourly rate goes that high
    db.write_tx(settings.engine, lambda c: registry.apply_catalog(c, cat, retroactive=True))
    found = client.get(url, params={"month": m}, headers=auth).json()["alerts"]
    assert [x["license"] for x in found if x["type"] == "pricing_error"] == ["SL-1"]


def test_a_negative_capacity_is_logged_billed_and_never_over(client, settings, tools):
    """§2 types a capacity's members as integers, no range: -1 refused the whole heartbeat, and
    with it the instance's running hour. Now it is evidence like any other: logged, its hour
    billed, and (below every licensed figure) never an over-capacity. Found by an interop review."""
    m = previous_month(month_of(int(time.time())))
    m0 = month_bounds(m)[0]
    cat = tools.catalog()
    cat["licenses"].append({
        "id": "SL-N", "customer": "c1", "instance": "TR7-0009", "model": "fixed", "unit": "hour",
        "start": "2026-01-01T00:00:00Z", "end": None,
        "capacity": [{"from": "2026-01-01T00:00:00Z", "bundle": "basic", "bandwidth_mbps": 100,
                      "vservices": 2}],
    })
    db.write_tx(settings.engine, lambda c: registry.apply_catalog(c, cat))
    a = tools.Agent("neg")
    tools.enrol(settings, "acme", a, m0 - 86400)
    line = a.beat(m0 + 3600 + 60, {"TR7-0009": "running"},
                  capacity={"bundle": "basic", "bandwidth_mbps": -5, "vservices": -1})
    r = client.post("/v1/heartbeats", content=line, headers={"Content-Type": "text/plain"})
    assert [x["status"] for x in r.json()["results"]] == ["accepted"]
    now = int(time.time())
    tok = db.write_tx(settings.engine, lambda c: credentials.new_api_token(c, "acme", "viewer", now))
    auth = {"Authorization": f"Bearer {tok}"}
    found = client.get("/v1/providers/acme/alerts", params={"month": m}, headers=auth).json()["alerts"]
    assert not [x for x in found if x["type"] == "over_capacity"]
    got = client.get("/v1/providers/acme/instances", params={"month": m}, headers=auth).json()["instances"]
    day = format_time(m0)[:10]
    assert [x for x in got if x["instance"] == "TR7-0009"] == [
        {"instance": "TR7-0009", "days": {day: {"active_hours": 1, "seen_hours": 1}}}]
    with db.read_conn(settings.engine) as c:
        usage, _inv = accounting.own_result(c, "acme", m)
    assert [r["active_hours"] for r in usage["rows"] if r["instance"] == "TR7-0009"] == [1]
