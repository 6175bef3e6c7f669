"""What the pages show agrees with what is billed: found by a review comparing every rendering.

A closed month's instance page used the latest catalog (its licences, its bridge policy); the
evidence page showed forked heartbeats as if they counted; the customer page and the planner
gave an estimate from before the latest change with no note; the provider's PDF had no total.
"""

import json
import re
import time
from typing import Any

from fastapi.testclient import TestClient

from collector import accounting, db, render
from collector.ingest import ingest_lines
from collector.web import data
from protocol.timefmt import format_time, month_of, parse_time
from tests._pdf import pdf_text
from tests.web.test_pages import login, world  # noqa: F401 (the fixture)

OCT = "2026-10"


def test_a_closed_months_instance_page_shows_the_licences_it_was_billed_with(
    client: TestClient, world: Any, tools: Any  # noqa: F811
) -> None:
    closed_at = parse_time("2026-11-02T00:00:00Z")
    db.write_tx(world.engine, lambda c: accounting.close(c, world, "acme", OCT, now=closed_at))
    # The change at the next hour, not a fixed day: an instant already past is billed in an open
    # month, and such a change is refused unless --retroactive (this test failed from 2026-12-07 on).
    at = (int(time.time()) // 3600 + 1) * 3600
    later = tools.catalog()
    later["licenses"][0]["end"] = format_time(at)
    later["licenses"].append({**later["licenses"][0], "id": "SL-9", "start": format_time(at), "end": None})
    tools.apply(world, later)
    login(client, "ann")
    october = client.get(f"/ui/p/acme/instances/TR7-0001?month={OCT}").text
    assert "SL-1" in october and "SL-9" not in october
    opened = client.get(f"/ui/p/acme/instances/TR7-0001?month={month_of(at)}").text
    assert "SL-9" in opened  # an open month: the latest catalog


def test_the_evidence_page_says_which_heartbeats_are_quarantined(
    client: TestClient, world: Any, tools: Any  # noqa: F811
) -> None:
    a = tools.Agent("forker")
    tools.enrol(world, "acme", a, parse_time("2026-09-01T00:00:00Z"))
    t = parse_time("2026-10-05T10:00:00Z")
    first = a.beat(t + 60, {"TR7-0001": "running"})
    a.seq, a.prev = a.seq - 1, "0" * 64  # the same seq signed again, other content: a fork
    second = a.beat(t + 120, {"TR7-0001": "stopped"})
    assert {r["status"] for r in ingest_lines(world.engine, [first, second])} == {"accepted"}
    login(client, "ann")
    html = client.get("/ui/p/acme/instances/TR7-0001/evidence", params={"hour": "2026-10-05T10:00:00Z"}).text
    beats = re.findall(r'<div class="beat">(.*?)</div>', html, re.S)
    forker = [b for b in beats if "forker" in b]
    assert len(forker) == 2 and all("quarantined" in b for b in forker)
    assert all("quarantined" not in b for b in beats if "forker" not in b)  # the other agent's counts


def test_the_customer_page_and_the_planner_say_when_their_estimate_is_older(
    client: TestClient, world: Any, monkeypatch  # noqa: F811
) -> None:
    login(client, "ann")
    for path in (f"/ui/p/acme/customers/c1?month={OCT}", f"/ui/p/acme/planner/c1?month={OCT}"):
        assert 'id="stale-note"' not in client.get(path).text
    monkeypatch.setattr(data, "results_stale", lambda *_a: True)  # a newer bill being computed
    for path in (f"/ui/p/acme/customers/c1?month={OCT}", f"/ui/p/acme/planner/c1?month={OCT}"):
        assert 'id="stale-note"' in client.get(path).text, path


def test_the_providers_pdf_ends_with_its_total(world: Any) -> None:  # noqa: F811
    with db.read_conn(world.engine) as c:
        inv = accounting.invoice(c, "acme", OCT)
    text = pdf_text(render.pdf_bytes(inv, {"c1": "Customer c1"}))
    assert f"Total: {inv['total']} EUR" in text and "summary" in text
    one = pdf_text(render.pdf_bytes(inv, {"c1": "Customer c1"}, ["c1"]))
    assert "summary" not in one  # a customer's own PDF is that customer's


def test_a_hand_over_hour_is_on_the_page_of_the_customer_billed_for_it(
    client: TestClient, world: Any, tools: Any  # noqa: F811
) -> None:
    """TR7-0001 passes from c1 to c2 at 10:30 on day 2: §3 gives the 10:00 hour to the licence with
    the latest start (c2's); both customers' pages counted it."""
    doc = tools.catalog(customers=["c1", "c2"])
    first = doc["licenses"][0]
    first["end"] = "2026-10-02T10:30:00Z"
    doc["licenses"].append({**first, "id": "SL-2", "customer": "c2", "start": "2026-10-02T10:30:00Z",
                            "end": None})
    tools.apply(world, doc, retroactive=True)
    login(client, "ann")

    def chart(customer: str) -> list[int]:
        html = client.get(f"/ui/p/acme/customers/{customer}?month={OCT}").text
        found = re.search(r'<script type="application/json" id="chart-data">(.*?)</script>', html, re.S)
        return json.loads(found.group(1))["values"]

    c1, c2 = chart("c1"), chart("c2")
    # day 2: running but 02:00-04:00; c1 until 10:00 (0, 1 and 4-9), c2 from the 10:00 hour on
    assert (c1[1], c2[1]) == (8, 14)
    with db.read_conn(world.engine) as c:
        billed = {x["license"]: x["quantity"] for x in accounting.invoice(c, "acme", OCT)["lines"]}
    assert (sum(c1), sum(c2)) == (billed["SL-1"], billed["SL-2"])  # the pages add up to the invoice


def test_the_customer_chart_marks_the_downgraded_hours_the_invoice_leaves_out(
    client: TestClient, world: Any, tools: Any  # noqa: F811
) -> None:
    """billing-v1.md §8: a downgraded customer's PAYG hours are not billed; the chart counted them
    as active hours like any other, so it did not add up to the invoice."""
    doc = tools.catalog()
    doc["customers"][0]["downgraded"] = [["2026-10-02T10:30:00Z", "2026-10-03T00:00:00Z"]]
    # and day 3 under a fixed-term licence: not billed by the hour either (the green bars were all
    # of the customer's active hours)
    doc["licenses"].append({**doc["licenses"][0], "id": "SL-F", "model": "fixed",
                            "start": "2026-10-03T00:00:00Z", "end": "2026-10-04T00:00:00Z"})
    tools.apply(world, doc, retroactive=True)
    login(client, "ann")
    html = client.get(f"/ui/p/acme/customers/c1?month={OCT}").text
    chart = json.loads(re.search(r'<script type="application/json" id="chart-data">(.*?)</script>', html,
                                 re.S).group(1))
    # day 2: running but 02:00-04:00; the 10:00 hour on belongs to the downgraded period
    assert (chart["values"][1], chart["downgraded"][1]) == (8, 14)
    assert (chart["values"][2], chart["other"][2], sum(chart["other"])) == (0, 24, 24)
    assert sum(chart["downgraded"]) == 14 and 'id="downgraded-hours">14 active PAYG hours' in html
    with db.read_conn(world.engine) as c:
        billed = {x["license"]: x["quantity"] for x in accounting.invoice(c, "acme", OCT)["lines"]}
    assert sum(chart["values"]) == billed["SL-1"]
    # without the period nothing is marked, and the page says nothing of it
    tools.apply(world, tools.catalog(), retroactive=True)
    html = client.get(f"/ui/p/acme/customers/c1?month={OCT}").text
    assert 'id="downgraded-hours"' not in html


def test_the_pdf_names_the_provider_as_its_catalog_does(client: TestClient, world: Any) -> None:  # noqa: F811
    """It named the provider by its id only ("acme")."""
    login(client, "ann")
    text = pdf_text(client.get(f"/ui/p/acme/invoices/{OCT}.pdf").content)
    assert f"{OCT} - Acme (acme)" in text


def test_a_closed_months_customer_page_says_which_hours_its_invoice_did_not_bill(
    client: TestClient, world: Any, tools: Any  # noqa: F811
) -> None:
    # UX review: the chart counted 24 late hours as billed, beside an invoice that did not bill them
    closed_at = parse_time("2026-11-02T00:00:00Z")
    db.write_tx(world.engine, lambda c: accounting.close(c, world, "acme", OCT, now=closed_at))
    late = tools.Agent("late")
    tools.enrol(world, "acme", late, parse_time("2026-09-01T00:00:00Z"))
    t = parse_time("2026-10-10T00:00:00Z")
    beats = [late.beat(t + h * 3600 + 60, {"TR7-0001": "running"}) for h in range(5)]
    assert {r["status"] for r in ingest_lines(world.engine, beats)} == {"accepted"}
    login(client, "ann")
    html = client.get(f"/ui/p/acme/customers/c1?month={OCT}").text
    note = re.search(r'<p class="note" id="late-hours">(.*?)</p>', html, re.S).group(1)
    assert note.startswith("5 of these hours came after 2026-10 was closed")
    assert "the adjustment lines of 2026-11 do" in note
    with db.read_conn(world.engine) as c:
        nov = accounting.invoice(c, "acme", "2026-11")
    adjusted = sum(float(x["quantity"]) for x in nov["lines"] if x.get("adjusts") == OCT)
    assert adjusted == 5  # what the note says is what November bills
    assert 'id="late-hours"' not in client.get("/ui/p/acme/customers/c1?month=2026-11").text
    # November closed (its invoice bills those 5), then 3 more late October hours: the note said 8
    # were still to come on December's invoice, which adjusts 3 (an MSP adding 5 by hand billed them
    # twice). Found by an MSP review.
    db.write_tx(world.engine, lambda c: accounting.close(c, world, "acme", "2026-11",
                                                         now=parse_time("2026-12-02T00:00:00Z")))
    more = [late.beat(t + h * 3600 + 60, {"TR7-0001": "running"}) for h in range(5, 8)]
    assert {r["status"] for r in ingest_lines(world.engine, more)} == {"accepted"}
    html = client.get(f"/ui/p/acme/customers/c1?month={OCT}").text
    note = re.search(r'<p class="note" id="late-hours">(.*?)</p>', html, re.S).group(1)
    assert note.startswith("3 of these hours came after 2026-10 was closed and are not invoiced yet")
    assert "the adjustment lines of 2026-12 do" in note
    since = re.search(r'<p class="note" id="late-invoiced">(.*?)</p>', html, re.S).group(1)
    assert since.startswith("5 more hours came after 2026-10 was closed and were invoiced already")
    with db.read_conn(world.engine) as c:
        dec = accounting.invoice(c, "acme", "2026-12")
    assert sum(float(x["quantity"]) for x in dec["lines"] if x.get("adjusts") == OCT) == 3


def test_the_instance_page_says_its_evidence_picker_lists_the_latest_hours_only(
    client: TestClient, world: Any, tools: Any  # noqa: F811
) -> None:
    """The picker offered the last 48 hours seen and did not say so, and a capacity without vservices
    read "100 Mbps  vs" where the invoice line beside it says "0 vs". Found by an MSP review."""
    doc = tools.catalog()
    doc["licenses"][0]["capacity"][0].pop("vservices", None)
    tools.apply(world, doc, retroactive=True)
    login(client, "ann")
    html = client.get(f"/ui/p/acme/instances/TR7-0001?month={OCT}").text
    hidden = re.search(r'<span class="note" id="hours-hidden">(.*?)</span>', html, re.S).group(1)
    assert hidden == "the latest 48 hours seen; 24 earlier ones: click their cell in the map above"  # 72 seen
    assert " Mbps  vs" not in html and " Mbps 0 vs" in html


def test_a_closed_months_customer_page_says_its_late_device_days(
    client: TestClient, world: Any, tools: Any  # noqa: F811
) -> None:
    """Device-days that late heartbeats added to a closed month were said on no page, and their
    adjustment row on the next invoice read "5 device-days = 0 months". Found by an MSP review."""
    doc = tools.catalog()
    doc["licenses"].append({"id": "DD-1", "customer": "c1", "instance": "TR7-0002", "model": "payg",
                            "unit": "device_day", "pack": "pro", "day_counts": "active",
                            "start": "2026-10-01T00:00:00Z", "end": None, "capacity": []})
    doc["rates"]["monthly"] = [{"pack": "pro", "price": "12.00"}]
    tools.apply(world, doc, retroactive=True)
    dev = tools.Agent("dev")
    tools.enrol(world, "acme", dev, parse_time("2026-09-01T00:00:00Z"))
    day = 86400
    t = parse_time("2026-10-01T00:00:00Z")
    early = [dev.beat(t + d * day + 60, {"TR7-0002": "running"}) for d in range(3)]
    assert {r["status"] for r in ingest_lines(world.engine, early)} == {"accepted"}
    db.write_tx(world.engine, lambda c: accounting.close(c, world, "acme", OCT,
                                                         now=parse_time("2026-11-02T00:00:00Z")))
    late = [dev.beat(t + d * day + 60, {"TR7-0002": "running"}) for d in range(10, 15)]
    assert {r["status"] for r in ingest_lines(world.engine, late)} == {"accepted"}
    login(client, "ann")
    html = client.get(f"/ui/p/acme/customers/c1?month={OCT}").text
    note = re.search(r'<p class="note" id="late-device-days">(.*?)</p>', html, re.S).group(1)
    assert note == (f"+5 device-days since {OCT} was closed, not invoiced yet: the device-day rows marked "
                    f"{OCT} on 2026-11 adjust them.")
    nov = client.get("/ui/p/acme/customers/c1?month=2026-11").text
    assert f"+5 device-days, +0 months since {OCT} was invoiced" in nov
    assert "5 device-days = 0 months" not in nov
