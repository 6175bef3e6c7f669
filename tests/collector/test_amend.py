"""A closed month's late heartbeats its frozen catalog cannot price: named, and amended away.

One late heartbeat in an hour the catalog of a closed month could not price blocked the next
month's invoice and close and the closed month's export for good (no apply reaches a closed
month's catalog). `tr7-collector amend` prices it, and may change nothing the close billed.
"""

import json
import subprocess
import sys
from pathlib import Path

from audit.verify import verify_bundle
from collector import accounting, db, registry
from collector.export import export
from collector.ingest import ingest_lines
from protocol.timefmt import parse_time

JAN, FEB = "2026-09", "2026-10"  # both ended


def _licensed(tools) -> dict:
    doc = tools.catalog()
    doc["licenses"].append({**doc["licenses"][0], "id": "SL-2", "instance": "TR7-0002", "capacity": [
        {"from": "2026-01-01T00:00:00Z", "bundle": "pro", "bandwidth_mbps": 2000, "vservices": 10}]})
    return doc  # SL-2's capacity (pro, 2000 Mbps) has no hourly rate: the one rate stops at 1000


def _closed_then_a_late_heartbeat(
    settings, tools, agents: list | None = None
) -> tuple[dict, accounting.Closed]:
    """September billed and closed, then a late heartbeat of it on SL-2, which its catalog cannot
    price (by agent b, seq 1; ``agents`` receives a and b)."""
    doc = _licensed(tools)
    db.write_tx(settings.engine, lambda c: registry.apply_catalog(c, doc))
    a, b = tools.Agent("a"), tools.Agent("b")
    if agents is not None:
        agents += [a, b]
    for ag in (a, b):
        tools.enrol(settings, "acme", ag, parse_time("2026-08-01T00:00:00Z"))
    j, f = parse_time("2026-09-01T00:00:00Z"), parse_time("2026-10-01T00:00:00Z")
    ingest_lines(settings.engine, [a.beat(j + 3600, {"TR7-0001": "running"}),
                                   a.beat(f + 3600, {"TR7-0001": "running"})])
    closed = db.write_tx(settings.engine, lambda c: accounting.close(c, settings, "acme", JAN))
    ingest_lines(settings.engine, [b.beat(j + 7200, {"TR7-0002": "running"})])  # late, another site
    return doc, closed


def _with_rate(doc: dict, price: str) -> dict:
    """``doc`` with an hourly rate for SL-2's capacity (pro, up to 5000 Mbps) at ``price``."""
    out = json.loads(json.dumps(doc))
    out["rates"]["hourly"].append({"bundle": "pro", "max_bandwidth_mbps": 5000, "price": price})
    return out


def _amend(settings, doc: dict, now: int) -> list[str]:
    from collector.amend import amend_closed

    return db.write_tx(settings.engine, lambda c: amend_closed(c, "acme", JAN, doc, now=now))


def _cli(settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "collector.cli", *args, "--data-dir", str(settings.data_dir),
                           "--db", settings.db_url], capture_output=True, text=True, check=False)


def test_a_late_heartbeat_the_closed_catalog_cannot_price_is_named_and_amended(
    settings, tools, tmp_path: Path
) -> None:
    doc, closed = _closed_then_a_late_heartbeat(settings, tools)
    assert closed.billed["total"] == "0.05"

    out = _cli(settings, "bill", "--provider", "acme", "--month", FEB)
    assert out.returncode == 1 and "in late heartbeats of 2026-09, which is closed" in out.stderr
    assert "tr7-collector amend --provider acme --month 2026-09" in out.stderr

    out = _cli(settings, "export", "--provider", "acme", "--month", JAN, "--out", str(tmp_path / "no"))
    assert out.returncode == 1 and "in heartbeats of 2026-09" in out.stderr and "amend" in out.stderr

    out = _cli(settings, "catalog", "--provider", "acme", "--month", JAN)  # as closed: amend's start
    assert out.returncode == 0, out.stderr
    changed = json.loads(out.stdout)
    assert changed["licenses"] == doc["licenses"]
    changed["rates"]["hourly"][0]["price"] = "0.0500"  # reprices what the close billed: refused
    (tmp_path / "changed.json").write_text(json.dumps(changed))
    out = _cli(settings, "amend", "--provider", "acme", "--month", JAN, str(tmp_path / "changed.json"))
    assert out.returncode == 1 and "changes what 2026-09 was closed with" in out.stderr, out.stderr
    # what the close froze is "stored", what the amendment would make of it "recomputed"
    stored = out.stderr.split("stored but not recomputed:", 1)[1].split(";", 1)[0]
    assert '"price":"0.0450"' in stored and "recomputed but not stored:" in out.stderr
    out = _cli(settings, "amend", "--provider", "acme", "--month", FEB, str(tmp_path / "changed.json"))
    assert out.returncode == 1 and "2026-10 is not closed" in out.stderr

    fixed = _with_rate(doc, "0.0900")
    (tmp_path / "fixed.json").write_text(json.dumps(fixed))
    out = _cli(settings, "amend", "--provider", "acme", "--month", JAN, str(tmp_path / "fixed.json"))
    assert out.returncode == 0 and "2026-09's late heartbeats are priced now" in out.stdout, out.stderr

    with db.read_conn(settings.engine) as c:
        feb = accounting.invoice(c, "acme", FEB)
    late = [x for x in feb["lines"] if x["adjusts"] == JAN]
    assert [(x["license"], x["quantity"], x["price"]) for x in late] == [("SL-2", 1, "0.0900")]
    assert db.write_tx(settings.engine, lambda c: accounting.close(c, settings, "acme", FEB)).billed["lines"]
    with db.read_conn(settings.engine) as c:
        path, agrees = export(c, settings, "acme", JAN, tmp_path / "bundle")
    report = verify_bundle(path, workers=1)
    assert agrees and report.ok, [f.to_json() for f in report.errors]
    assert json.loads((path / "catalog.json").read_text())["rates"]["hourly"][-1]["price"] == "0.0900"


def test_an_amendment_never_reprices_what_a_later_close_invoiced(settings, tools, tmp_path: Path) -> None:
    """September amended at 0.09, October closed billing the late hour at 0.09: a second amendment
    at 0.50 was accepted, and November credited -0.09 and billed +0.50."""
    from collector.amend import AmendError

    doc, _closed = _closed_then_a_late_heartbeat(settings, tools)

    first = _amend(settings, _with_rate(doc, "0.0900"), 100)
    assert "priced now" in first[0]
    db.write_tx(settings.engine, lambda c: accounting.close(c, settings, "acme", FEB))  # bills it at 0.09
    import pytest

    with pytest.raises(AmendError, match="changes what was already invoiced for 2026-09"):
        _amend(settings, _with_rate(doc, "0.5000"), 100)
    # the same prices again, in the same second: accepted, and later than the first
    _amend(settings, _with_rate(doc, "0.0900"), 100)
    with db.read_conn(settings.engine) as c:
        assert accounting.catalog_for(c, "acme", JAN)[0] == -101



def test_a_fork_logged_after_an_invoice_does_not_read_as_a_repricing(settings, tools) -> None:
    """September's late hour on SL-2 amended at 0.09 and invoiced by October's close; then b's
    seq 1 shows up signed twice (a restored snapshot): both copies are quarantined and the SL-2
    line leaves the current documents whatever the catalog. An amendment that reprices nothing
    was refused as if it did; one that does still is."""
    import pytest

    from collector.amend import AmendError

    agents: list = []
    doc, _closed = _closed_then_a_late_heartbeat(settings, tools, agents)

    _amend(settings, _with_rate(doc, "0.0900"), 100)
    db.write_tx(settings.engine, lambda c: accounting.close(c, settings, "acme", FEB))  # bills it at 0.09
    b = agents[1]
    b.seq, b.prev = 1, "0" * 64  # seq 1 again, observed a minute later: a fork of the invoiced hour
    fork = b.beat(parse_time("2026-09-01T02:01:00Z"), {"TR7-0002": "running"})
    assert ingest_lines(settings.engine, [fork])[0]["status"] == "accepted"
    with db.read_conn(settings.engine) as c:
        assert [x["license"] for x in accounting.own_result(c, "acme", JAN)[1]["lines"]] == ["SL-1"]
    more = _with_rate(doc, "0.0900")
    more["rates"]["hourly"].append({"bundle": "basic", "max_bandwidth_mbps": 100, "price": "0.0100"})
    out = _amend(settings, more, 200)
    assert out and "amended" in out[0]
    with pytest.raises(AmendError, match="changes what was already invoiced for 2026-09"):
        _amend(settings, _with_rate(doc, "0.5000"), 300)


def test_a_baseline_from_before_migration_0011_is_checked_over_the_whole_log(settings, tools) -> None:
    """0011 records the log size each baseline was computed over; one recorded before has none and
    is compared over the month's whole log, as it was."""
    import sqlalchemy as sa

    from collector import schema as s

    doc, closed = _closed_then_a_late_heartbeat(settings, tools)
    with db.read_conn(settings.engine) as c:
        assert c.execute(sa.select(s.baselines.c.size)).scalar_one() == closed.size
    for target in ("0010_closes_amended", "head"):
        tools.migrate_to(settings, target)
    with db.read_conn(settings.engine) as c:
        assert c.execute(sa.select(s.baselines.c.size)).scalar_one() is None
    fixed = _with_rate(doc, "0.0900")
    out = _amend(settings, fixed, 100)
    assert "priced now" in out[0]


def test_an_amendment_may_not_change_the_quantity_of_hours_already_invoiced(settings, tools) -> None:
    # Billing review: a downgraded period added over late hours a later close had invoiced kept
    # every price, and the month after credited them (-8 h) with no heartbeat behind it.
    import copy

    from collector.amend import AmendError

    db.write_tx(settings.engine, lambda c: registry.apply_catalog(c, tools.catalog()))
    a = tools.Agent("a")
    tools.enrol(settings, "acme", a, parse_time("2026-08-01T00:00:00Z"))
    j = parse_time("2026-09-01T00:00:00Z")
    beats = [a.beat(j + h * 3600 + 60, {"TR7-0001": "running"}, interval=3600) for h in range(24)]
    ingest_lines(settings.engine, beats[:10])
    db.write_tx(settings.engine, lambda c: accounting.close(c, settings, "acme", JAN))
    ingest_lines(settings.engine, beats[10:])
    db.write_tx(settings.engine, lambda c: accounting.close(c, settings, "acme", FEB))  # bills +14 h
    with db.read_conn(settings.engine) as c:
        doc = copy.deepcopy(accounting.catalog_for(c, "acme", JAN)[1])
    doc["customers"][0]["downgraded"] = [["2026-09-01T12:00:00Z", "2026-09-01T20:00:00Z"]]
    try:
        _amend(settings, doc, 0)
    except AmendError as exc:
        assert "changes what was already invoiced" in str(exc)
    else:
        raise AssertionError("the amendment was accepted")
    with db.read_conn(settings.engine) as c:
        nov = accounting.invoice(c, "acme", "2026-11")
    assert [x for x in nov["lines"] if x.get("adjusts") == JAN] == []  # nothing credited
