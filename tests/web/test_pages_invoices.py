"""What an MSP reads of a month's bill on the pages: unpriceable months, customers dropped from the
catalog, free-text customer ids in links and downloads, spreadsheet-safe CSV, readable PDFs."""

import copy
import csv
import io
import json
import re
from typing import Any
from urllib.parse import unquote

from fastapi.testclient import TestClient

from collector import accounting, db, render
from collector.ingest import ingest_lines
from protocol.timefmt import parse_time
from tests._pdf import pdf_text
from tests.web.test_pages import login, world  # noqa: F401 (the fixture)

OCT = "2026-10"


def _with(tools: Any, **changes: Any) -> dict[str, Any]:
    doc = tools.catalog()
    lic = doc["licenses"][0]
    lic.update(changes.pop("license", {}))
    doc.update(changes)
    return doc


def test_an_unpriceable_month_says_so_on_the_overview_and_in_downloads(
    client: TestClient, world: Any, tools: Any  # noqa: F811
) -> None:
    cap = {"from": "2026-01-01T00:00:00Z", "bundle": "pro", "bandwidth_mbps": 99999, "vservices": 10}
    tools.apply(world, _with(tools, license={"capacity": [cap]}), retroactive=True)  # no rate covers it
    stray = tools.Agent("stray")
    tools.enrol(world, "acme", stray, parse_time("2026-09-01T00:00:00Z"))
    beat = stray.beat(parse_time("2026-10-10T00:01:00Z"), {"TR7-0042": "running"})
    assert ingest_lines(world.engine, [beat])[0]["status"] == "accepted"  # unlicensed
    login(client, "ann")
    html = client.get(f"/ui/p/acme?month={OCT}").text
    assert 'data-type="unlicensed"' in html and "TR7-0042" in html  # it vanished with the invoice
    row = re.search(r'<tr data-customer="c1">(.*?)</tr>', html, re.S).group(1)
    assert '<td class="num">–</td>' in row  # not an estimate of 0.00
    assert 'data-type="pricing_error"' in html and "SL-1" in html
    for path in (f"/ui/p/acme/invoices/{OCT}.pdf", f"/ui/p/acme/invoices/{OCT}.csv?customer=c1"):
        r = client.get(path)
        assert r.status_code == 409 and "cannot price" in r.json()["detail"]


def test_a_customer_dropped_after_the_close_stays_on_the_month_it_was_billed(
    client: TestClient, world: Any, tools: Any  # noqa: F811
) -> None:
    now = parse_time("2026-11-02T00:00:00Z")
    db.write_tx(world.engine, lambda c: accounting.close(c, world, "acme", OCT, now=now))
    # c1 leaves: deliberate for the open months its open-ended license ran into
    tools.apply(world, tools.catalog(customers=["c2"], licenses=[]), retroactive=True)
    login(client, "ann")
    html = client.get(f"/ui/p/acme?month={OCT}").text
    row = re.search(r'<tr data-customer="c1">(.*?)</tr>', html, re.S)
    assert row is not None and "Customer c1" in row.group(1) and "3.15" in row.group(1)  # 70 h x 0.0450
    assert client.get(f"/ui/p/acme/customers/c1?month={OCT}").status_code == 200
    pdf = client.get(f"/ui/p/acme/invoices/{OCT}.pdf?customer=c1")
    assert pdf.status_code == 200 and "Customer: Customer c1 (c1)" in pdf_text(pdf.content)


def test_free_text_customer_ids_in_links_and_downloads(
    client: TestClient, world: Any, tools: Any  # noqa: F811
) -> None:
    ids = ["AT/1001", "R&D", "A+B", "Łódź-1"]
    tools.apply(world, tools.catalog(customers=["c1", *ids]))
    login(client, "ann")
    html = client.get(f"/ui/p/acme?month={OCT}").text
    for cid in ids:
        shown = re.escape(cid.replace("&", "&amp;"))
        href = re.search(rf'<tr data-customer="{shown}"><td><a href="([^"]+)"', html)
        page = client.get(href.group(1).replace("&amp;", "&"))
        assert page.status_code == 200 and f"Customer {cid}".replace("&", "&amp;") in page.text, cid
        for link in re.findall(r'href="(/ui/p/acme/invoices/[^"]+)"', page.text):
            got = client.get(link.replace("&amp;", "&"))
            assert got.status_code == 200, (cid, link, got.text)
            disposition = got.headers["content-disposition"]
            assert unquote(disposition.split("filename*=UTF-8''")[1]).endswith(
                f"-{cid.replace('/', '_')}.{link.split('.')[-1].split('?')[0]}"
            )
    # the account form of a customer whose id holds a slash
    page = client.get(f"/ui/p/acme/customers/{'AT%2F1001'}?month={OCT}").text
    assert 'action="/ui/p/acme/customers/AT%2F1001/account"' in page


def test_csv_cells_a_spreadsheet_would_run_are_quoted(client: TestClient, world: Any, tools: Any) -> None:  # noqa: F811
    doc = tools.catalog(customers=["=HYPERLINK(1)"])
    doc["licenses"][0].update({"id": "+SUM(1,2)", "customer": "=HYPERLINK(1)"})
    tools.apply(world, doc, retroactive=True)
    login(client, "ann")
    rows = list(csv.DictReader(io.StringIO(client.get(f"/ui/p/acme/invoices/{OCT}.csv").text)))
    hours = [r for r in rows if r["kind"] == "hours"]
    assert {(r["customer"], r["license"]) for r in hours} == {("'=HYPERLINK(1)", "'+SUM(1,2)")}
    assert [r["amount"] for r in rows if r["kind"] == "total"] == ["3.15"]
    # amounts are never prefixed, negative ones included
    inv = {"lines": [], "device_days": [], "totals": {"c1": "-1.50"}, "total": "-1.50", "currency": "EUR",
           "provider": "acme", "month": OCT}
    assert "customer_total,c1,,,,,,,,,,,-1.50," in render.csv_bytes(inv).decode()
    # a customer's name from the catalog is text a spreadsheet would run too
    assert ",'=cmd|' /C calc'!A0,acme," in render.csv_bytes(inv, {"c1": "=cmd|' /C calc'!A0"}).decode()
    # and so are a provider's id and a currency, which a catalog may start with '='
    odd = render.csv_bytes({**inv, "provider": "=1+1", "currency": "@SUM"}).decode()
    assert ",'=1+1," in odd and ",'@SUM," in odd and ",=1+1," not in odd


def test_pdf_names_in_other_scripts_and_a_customer_without_lines(
    client: TestClient, world: Any, tools: Any  # noqa: F811
) -> None:
    doc = tools.catalog(customers=["c1", "c2"])
    doc["customers"][0]["name"] = "Łódź Sp. z o.o. — O’Brien Ελλάς 東京"
    tools.apply(world, doc)
    login(client, "ann")
    text = pdf_text(client.get(f"/ui/p/acme/invoices/{OCT}.pdf?customer=c1").content)
    assert "Łódź Sp. z o.o. — O’Brien Ελλάς ?? (c1)" in text  # no CJK glyphs in DejaVu Sans
    empty = client.get(f"/ui/p/acme/invoices/{OCT}.pdf?customer=c2").content
    assert "Customer: Customer c2 (c2)" in pdf_text(empty)


def test_the_customer_page_counts_the_customers_hours_only(
    client: TestClient, world: Any, tools: Any  # noqa: F811
) -> None:
    later = copy.deepcopy(tools.catalog())
    later["licenses"][0]["start"] = "2026-10-02T00:00:00Z"  # day 1's hours are unlicensed now
    tools.apply(world, later, retroactive=True)
    login(client, "ann")
    html = client.get(f"/ui/p/acme/customers/c1?month={OCT}").text
    chart = re.search(r'<script type="application/json" id="chart-data">(.*?)</script>', html).group(1)
    chart = json.loads(chart)
    assert chart["values"][:4] == [0, 22, 24, 0]  # day 2 stopped 02:00-04:00, nothing after day 3
    whole = client.get(f"/ui/p/acme/instances/TR7-0001?month={OCT}").text
    day1 = re.search(r'<tr data-day="2026-10-01">(.*?)</tr>', whole).group(1)
    assert re.findall(r'<td class="(\w)">', day1).count("a") == 24  # the instance page shows all its hours


def test_an_open_months_pdf_is_an_estimate_and_every_csv_row_has_the_currency(
    client: TestClient, world: Any  # noqa: F811
) -> None:
    """The estimate PDF of an open month was titled "Invoice" and named invoice-…: an MSP could
    send it as the invoice. The CSV carried no currency at all."""
    login(client, "ann")
    r = client.get(f"/ui/p/acme/invoices/{OCT}.pdf?customer=c1")
    text = pdf_text(r.content)
    assert "Estimate 2026-10" in text and "Not an invoice" in text and "Invoice 2026-10" not in text
    assert "filename=\"estimate-acme-2026-10-c1.pdf\"" in r.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(client.get(f"/ui/p/acme/invoices/{OCT}.csv").text)))
    assert rows and {row["currency"] for row in rows} == {"EUR"}
    # and each row says whose, which month and that it is no invoice yet (opened in a spreadsheet,
    # the file's name is gone)
    assert {(row["provider"], row["month"], row["document"]) for row in rows} == {("acme", OCT, "estimate")}
    assert {row["customer_name"] for row in rows if row["customer"] == "c1"} == {"Customer c1"}
    db.write_tx(world.engine, lambda c: accounting.close(c, world, "acme", OCT))
    rows = list(csv.DictReader(io.StringIO(client.get(f"/ui/p/acme/invoices/{OCT}.csv").text)))
    assert {row["document"] for row in rows} == {"invoice"}
    r = client.get(f"/ui/p/acme/invoices/{OCT}.pdf?customer=c1")
    assert "Invoice 2026-10" in pdf_text(r.content) and "Not an invoice" not in pdf_text(r.content)
    assert "filename=\"invoice-acme-2026-10-c1.pdf\"" in r.headers["content-disposition"]
