"""End to end: heartbeats over HTTP -> bill -> close -> late heartbeats -> adjustments -> export -> audit."""

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from audit.simulate import build_scenario
from billing import same_invoice, same_usage
from collector import accounting, credentials, db, registry
from collector.export import export
from collector.ingest import ingest_lines
from protocol.heartbeat import token_digest
from protocol.timefmt import month_bounds, month_of, previous_month

H = 3600


def _months() -> tuple[str, str]:
    """Two months that have ended (so no heartbeat is in the future whatever the clock says)."""
    n = previous_month(month_of(int(time.time())))
    return previous_month(n), n


def _post(client, lines):
    r = client.post(
        "/v1/heartbeats", content="".join(x + "\n" for x in lines), headers={"Content-Type": "text/plain"}
    )
    assert r.status_code == 200, r.text
    return [x["status"] for x in r.json()["results"]]


def _audit(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "audit.cli", "verify", "--quiet", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_bill_close_late_adjust_export_verify(client, settings, tools, tmp_path):
    m, n = _months()
    m0, n0 = month_bounds(m)[0], month_bounds(n)[0]
    db.write_tx(settings.engine, lambda c: registry.apply_catalog(c, tools.catalog()))
    a = tools.Agent()
    tools.enrol(settings, "acme", a, m0 - 30 * 86400)
    # 3 days of M at 30-minute polls; day 3 is spooled and only delivered after the close.
    beats = [a.beat(m0 + i * 1800, {"TR7-0001": "running", "TR7-0099": "running"}) for i in range(3 * 48)]
    on_time, late = beats[:96], beats[96:]
    assert set(_post(client, on_time)) == {"accepted"}
    with db.read_conn(settings.engine) as c:
        inv = accounting.invoice(c, "acme", m)
        assert same_invoice(inv, accounting.full_result(c, "acme", m)[1])
    assert [(x["instance"], x["quantity"], x["amount"]) for x in inv["lines"]] == [("TR7-0001", 48, "2.16")]

    closed = db.write_tx(settings.engine, lambda c: accounting.close(c, settings, "acme", m))
    assert closed.size == 96 and closed.billed["total"] == "2.16"
    with pytest.raises(accounting.AccountingError, match="already closed"):
        db.write_tx(settings.engine, lambda c: accounting.close(c, settings, "acme", m))

    assert set(_post(client, late)) == {"accepted"}  # a closed month's log still grows
    assert set(_post(client, [a.beat(n0 + 600, {"TR7-0001": "running"})])) == {"accepted"}
    with db.read_conn(settings.engine) as c:
        assert accounting.invoice(c, "acme", m)["total"] == "2.16"  # frozen
        inv_n = accounting.invoice(c, "acme", n)
    adj = [x for x in inv_n["lines"] if x["adjusts"] == m]
    own = [x for x in inv_n["lines"] if x["adjusts"] is None]
    assert [(x["quantity"], x["amount"]) for x in adj] == [(24, "1.08")]
    assert [(x["quantity"], x["amount"]) for x in own] == [(1, "0.05")]
    assert inv_n["total"] == "1.13"

    # Closing N freezes the adjustment; a further late heartbeat of M adjusts only the remainder.
    db.write_tx(settings.engine, lambda c: accounting.close(c, settings, "acme", n))
    assert set(_post(client, [a.beat(m0 + 3 * 86400 + 600, {"TR7-0001": "running"})])) == {"accepted"}
    with db.read_conn(settings.engine) as c:
        assert accounting.invoice(c, "acme", n)["total"] == "1.13"
        later = accounting.invoice(c, "acme", month_of(int(time.time())))
    assert [(x["quantity"], x["adjusts"]) for x in later["lines"]] == [(1, m)]

    out = tmp_path / "bundle"
    with db.read_conn(settings.engine) as c:
        _path, agrees = export(c, settings, "acme", m, out)
    assert agrees
    files = json.loads((out / "manifest.json").read_text())["files"]
    assert "closed/checkpoint" in files and len((out / "heartbeats.jws").read_text().splitlines()) == 145
    assert json.loads((out / "closed/invoice.json").read_text())["total"] == "2.16"
    assert all(x["adjusts"] is None for x in json.loads((out / "invoice.json").read_text())["lines"])
    r = _audit(out)
    assert r.returncode == 0, r.stdout + r.stderr

    bad = tmp_path / "tampered"
    shutil.copytree(out, bad)
    inv_doc = json.loads((bad / "invoice.json").read_text())
    inv_doc["total"] = "0.01"
    (bad / "invoice.json").write_text(json.dumps(inv_doc))
    assert _audit(bad).returncode == 1
    bad2 = tmp_path / "tampered2"
    shutil.copytree(out, bad2)
    lines = (bad2 / "heartbeats.jws").read_text().splitlines()
    (bad2 / "heartbeats.jws").write_text("\n".join(lines[:-1]) + "\n")
    assert _audit(bad2).returncode == 1


def test_close_refuses_an_open_month_unless_forced(settings, tools):
    db.write_tx(settings.engine, lambda c: registry.apply_catalog(c, tools.catalog()))
    now = month_of(int(time.time()))
    with pytest.raises(accounting.AccountingError, match="has not ended"):
        db.write_tx(settings.engine, lambda c: accounting.close(c, settings, "acme", now))
    c = db.write_tx(settings.engine, lambda c: accounting.close(c, settings, "acme", now, force=True))
    assert c.size == 0


def test_aggregates_equal_full_recomputation_with_fork_gap_and_overuse(settings, tmp_path):
    m, _ = _months()
    sc = build_scenario(month=m, interval=1200)
    db.write_tx(settings.engine, lambda c: registry.apply_catalog(c, sc.catalog))
    for ag in sc.agents:
        db.write_tx(
            settings.engine,
            lambda c, ag=ag: credentials.add_agent(c, sc.provider, ag.name, ag.key.public_b64,
                                                   ag.enrolled_at),
        )
    assert {r["status"] for r in ingest_lines(settings.engine, sc.anchors)} == {"accepted"}
    for i in range(0, len(sc.leaves), 2000):
        assert {r["status"] for r in ingest_lines(settings.engine, sc.leaves[i : i + 2000])} == {"accepted"}
    with db.read_conn(settings.engine) as c:
        agg = accounting.own_result(c, sc.provider, m)
        full = accounting.full_result(c, sc.provider, m)
    assert same_usage(agg[0], full[0]) and same_invoice(agg[1], full[1])
    chains = {ch["agent"]: ch for ch in agg[0]["chains"]}
    lab, cloud = sc.agent("lab-agent"), sc.agent("cloud-agent")
    assert chains[lab.key.kid]["forks"] == sc.expected["forks"]["lab-agent"]
    assert chains[cloud.key.kid]["gaps"] == sc.expected["gaps"]["cloud-agent"]
    assert any("over_capacity" in r["flags"] for r in agg[0]["rows"])
    # and the scenario's own reference bundle agrees with ours
    from audit.recompute import bill_lines

    ref_usage, ref_inv = bill_lines(sc.leaves, sc.anchors, sc.catalog, m)
    assert same_usage(agg[0], ref_usage) and same_invoice(agg[1], ref_inv)
    # its bundle (anchors from the month before, a fork, a gap) passes the offline auditor
    with db.read_conn(settings.engine) as c:
        _path, agrees = export(c, settings, sc.provider, m, tmp_path / "bundle")
    assert agrees
    assert sorted((tmp_path / "bundle" / "anchors.jws").read_text().split()) == sorted(sc.anchors)
    r = _audit(tmp_path / "bundle")
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_closed_months_bundle_keeps_verifying_after_later_records(settings, tools, tmp_path):
    """The frozen documents are recomputed from the bundle's catalog.json and anchors.jws: a
    downgrade recorded after the close that reaches back into the month, and a late heartbeat of
    the month before (it moves that month's last seq), change neither, nor bill adjustments."""
    from collector.accounts import store

    prev, m = _months()
    p0, m0 = month_bounds(prev)[0], month_bounds(m)[0]
    db.write_tx(settings.engine, lambda c: registry.apply_catalog(c, tools.catalog()))
    a = tools.Agent()
    tools.enrol(settings, "acme", a, p0 - 86400)
    up = {"TR7-0001": "running"}
    # seq 1-7 at the end of the month before, 8-10 spooled, 11-30 in the month (an hour apart)
    early = [a.beat(m0 - 86400 + i * H, up) for i in range(7)]
    spooled = [a.beat(m0 - 3 * H + i * H, up) for i in range(3)]
    month = [a.beat(m0 + 20 * 86400 + i * H, up) for i in range(20)]
    for lines in (early, month):
        assert {r["status"] for r in ingest_lines(settings.engine, lines)} == {"accepted"}
    db.write_tx(settings.engine, lambda c: accounting.close(c, settings, "acme", m))
    with db.read_conn(settings.engine) as c:
        frozen = accounting.closed(c, "acme", m)
    assert frozen.usage["chains"][0]["gaps"] == [[8, 10]] and frozen.invoice["total"] == "0.90"

    # After the close: c1's payment failed on day 1 of the month; the tick on day 17 downgrades it
    # from day 16 (15 days' grace); and the spooled heartbeats of the month before arrive.
    db.write_tx(settings.engine, lambda c: store.payment_failed(c, "acme", "c1", m0 + 86400))
    done = db.write_tx(settings.engine, lambda c: store.tick_all(c, m0 + 17 * 86400))
    assert [(act.kind, act.at) for _p, _c, act in done if act.kind == "downgraded"] == [
        ("downgraded", m0 + 16 * 86400)
    ]
    assert {r["status"] for r in ingest_lines(settings.engine, spooled)} == {"accepted"}

    with db.read_conn(settings.engine) as c:
        assert accounting.own_result(c, "acme", m) == (frozen.usage, frozen.invoice)
        later = accounting.invoice(c, "acme", month_of(int(time.time())))
        assert [x for x in later["lines"] if x["adjusts"] == m] == []
        # the open month before still sees its own late data (its chain is whole now)
        assert accounting.own_result(c, "acme", prev)[0]["chains"][0]["gaps"] == []
        _path, agrees = export(c, settings, "acme", m, tmp_path / "bundle")
    assert agrees
    r = _audit(tmp_path / "bundle")
    assert r.returncode == 0, r.stdout + r.stderr


def test_migration_0009_keeps_closes_and_reads_old_ones_as_before(settings, tools):
    import sqlalchemy as sa

    from collector import schema as s

    prev, m = _months()
    db.write_tx(settings.engine, lambda c: registry.apply_catalog(c, tools.catalog()))
    a = tools.Agent()
    tools.enrol(settings, "acme", a, month_bounds(prev)[0])
    beats = [a.beat(month_bounds(m)[0] + i * H, {"TR7-0001": "running"}) for i in range(5)]
    ingest_lines(settings.engine, beats)
    db.write_tx(settings.engine, lambda c: accounting.close(c, settings, "acme", m))
    for target in ("0008_spool_lag", "head"):
        tools.migrate_to(settings, target)
    with db.read_conn(settings.engine) as c:
        row = c.execute(sa.select(s.closes)).one()
        assert (row.catalog_doc, row.anchor_size) == (None, None)  # not recorded before 0009
        assert (row.amended_doc, row.amended_at) == (None, None)  # 0010: never amended
        frozen = accounting.closed(c, "acme", m)
        assert accounting.own_result(c, "acme", m) == (frozen.usage, frozen.invoice)
        assert accounting.catalog_for(c, "acme", m)[1]["provider"]["id"] == "acme"


def test_a_read_connection_sees_one_snapshot(settings, tools):
    """export reads the log, the anchors and the leaves in several statements: an ingest that
    commits meanwhile must not show in the later ones (PostgreSQL's READ COMMITTED did)."""
    from collector import tlog

    prev, m = _months()
    a = tools.Agent()
    tools.enrol(settings, "acme", a, month_bounds(prev)[0])
    beats = [a.beat(month_bounds(m)[0] + i * H, {"TR7-0001": "running"}) for i in range(4)]
    ingest_lines(settings.engine, beats[:2])
    with db.read_conn(settings.engine) as c:
        assert tlog.log_size(c, "acme", m) == 2
        ingest_lines(settings.engine, beats[2:])  # commits in another connection
        assert tlog.log_size(c, "acme", m) == 2 and len(tlog.leaf_tokens(c, "acme", m)) == 2
    with db.read_conn(settings.engine) as c:
        assert tlog.log_size(c, "acme", m) == 4


def test_the_month_adjustments_land_on_is_listed_without_heartbeats_of_its_own(client, settings, tools):
    m, n = _months()
    m0 = month_bounds(m)[0]
    db.write_tx(settings.engine, lambda c: registry.apply_catalog(c, tools.catalog()))
    a = tools.Agent()
    tools.enrol(settings, "acme", a, m0 - 86400)
    beats = [a.beat(m0 + i * 1800, {"TR7-0001": "running"}) for i in range(6)]
    ingest_lines(settings.engine, beats[:2])
    db.write_tx(settings.engine, lambda c: accounting.close(c, settings, "acme", m))
    ingest_lines(settings.engine, beats[2:])  # late: adjustment lines on n, which has no heartbeat
    tok = db.write_tx(settings.engine, lambda c: credentials.new_api_token(c, "acme", "viewer", 0))
    auth = {"Authorization": f"Bearer {tok}"}
    listed = client.get("/v1/providers/acme/invoices", headers=auth).json()
    assert {"month": n, "closed": False} in listed and {"month": m, "closed": True} in listed
    inv = client.get(f"/v1/providers/acme/invoices/{n}", headers=auth).json()
    assert [x["adjusts"] for x in inv["lines"]] == [m]


def test_a_forked_last_heartbeat_of_the_month_before_breaks_nothing(settings, tools, tmp_path):
    # Billing review: September's seq 5 signed twice (A logged first, then B); October's seq 6
    # chains from B. It was a break against A (the first logged copy was the only anchor), its
    # hour unbilled, and the bundle (A alone in anchors.jws) verified that way.
    db.write_tx(settings.engine, lambda c: registry.apply_catalog(c, tools.catalog()))
    a = tools.Agent("a")
    tools.enrol(settings, "acme", a, month_bounds("2026-09")[0])
    m0 = month_bounds("2026-10")[0]
    run = {"TR7-0001": "running"}
    sep = [a.beat(m0 - 3000 + i * 600, run) for i in range(4)]
    copy_a = a.beat(m0 - 300, run)
    a.seq, a.prev = 5, token_digest(sep[-1])  # the same seq 5 signed again: a fork
    copy_b = a.beat(m0 - 299, run)
    october = [a.beat(m0 + 600, run), a.beat(m0 + 3 * 3600 + 600, run)]
    beats = [*sep, copy_a, copy_b, *october]
    assert {r["status"] for r in ingest_lines(settings.engine, beats)} == {"accepted"}
    with db.read_conn(settings.engine) as c:
        usage, invoice = accounting.own_result(c, "acme", "2026-10")
        full = accounting.full_result(c, "acme", "2026-10")
        _path, agrees = export(c, settings, "acme", "2026-10", tmp_path / "bundle")
    assert usage["chains"][0]["breaks"] == [] and usage["chains"][0]["gaps"] == []
    assert [(x["quantity"], x["amount"]) for x in invoice["lines"]] == [(2, "0.09")]
    assert same_usage(usage, full[0]) and same_invoice(invoice, full[1]) and agrees
    assert sorted((tmp_path / "bundle" / "anchors.jws").read_text().split()) == sorted([copy_a, copy_b])
    r = _audit(tmp_path / "bundle")
    assert r.returncode == 0, r.stdout + r.stderr
