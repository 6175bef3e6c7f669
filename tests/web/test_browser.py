"""End to end in Chromium (Playwright): a real collector process holding a simulated month.

Screenshots of every main page go to tests/web/screenshots/ (gitignored) or $TR7_WEB_ARTIFACTS.
"""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from audit.simulate import build_scenario
from collector import credentials, db, registry
from collector.ingest import ingest_lines
from collector.settings import Settings
from collector.web import auth
from tests._pdf import pdf_text
from tests._serve import serve_collector  # tests/web/conftest.py puts the repository on sys.path

PASSWORD = "correct horse battery"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOTS = Path(os.environ.get("TR7_WEB_ARTIFACTS") or Path(__file__).parent / "screenshots")


def _seed(settings: Settings) -> None:
    sc = build_scenario(month="2026-10")
    # c1 downgraded for a day (billing-v1.md §8): its chart stacks those hours in grey
    next(c for c in sc.catalog["customers"] if c["id"] == "c1")["downgraded"] = [
        ["2026-10-20T00:00:00Z", "2026-10-21T00:00:00Z"]]
    eng = settings.engine
    db.write_tx(eng, lambda c: registry.apply_catalog(c, sc.catalog))
    for a in sc.agents:
        db.write_tx(
            eng, lambda c, a=a: credentials.add_agent(c, "acme", a.name, a.key.public_b64, a.enrolled_at)
        )
    lines = sc.anchors + sc.leaves
    for i in range(0, len(lines), 5000):
        ingest_lines(eng, lines[i : i + 5000])
    beta = {
        **sc.catalog,
        "provider": {"id": "beta", "name": "Beta MSP", "currency": "EUR"},
        "customers": [{"id": "z1", "name": "Zulu Secret Ltd", "downgraded": []}],
        "licenses": [],
    }
    db.write_tx(eng, lambda c: registry.apply_catalog(c, beta))
    for name, prov, role in (("ann", "acme", "admin"), ("ven", None, "vendor"), ("bob", "beta", "admin")):
        db.write_tx(eng, lambda c, n=name, p=prov, r=role: auth.add_user(c, p, r, n, PASSWORD, 0))


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("e2e")
    settings = Settings(tmp / "data", f"sqlite:///{tmp / 'collector.db'}", "collector.e2e")
    settings.open()
    _seed(settings)
    settings.engine.dispose()
    with serve_collector(settings) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        yield b
        b.close()


def signed_in(browser: Browser, base_url: str, user: str) -> Page:
    page = browser.new_context(
        base_url=base_url, viewport={"width": 1300, "height": 900}, accept_downloads=True
    ).new_page()
    page.goto("/ui/login")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    return page


def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def cell(page: Page, instance: str, hour: str) -> str:
    """The class of one heatmap cell: the row is the day, the column the hour."""
    row = page.locator(f'table.heat[data-instance="{instance}"] tr[data-day="{hour[:10]}"]')
    code = row.locator("td").nth(int(hour[11:13])).get_attribute("class") or ""
    return {"a": "active", "i": "inactive", "u": "unknown", "b": "bridged"}[code]


def test_admin_walks_overview_customer_instance_agents(
    browser: Browser, base_url: str, tmp_path: Path
) -> None:
    page = signed_in(browser, base_url, "ann")
    assert page.url.endswith("/ui/p/acme")
    page.goto("/ui/p/acme?month=2026-10")
    assert page.locator("#customers tr[data-customer=c1]").count() == 1
    types = set(page.locator("#alerts tr[data-type]").evaluate_all("rows => rows.map(r => r.dataset.type)"))
    assert {"fork", "unlicensed", "over_capacity"} <= types  # the simulated month holds each of them
    shot(page, "overview")

    page.click("text=Alpine Logistics AG")
    page.wait_for_selector("#hours-chart[data-rendered='1']")
    assert page.url.endswith("/ui/p/acme/customers/c1?month=2026-10")
    assert cell(page, "TR7-A01", "2026-10-05T10:00:00Z") == "active"
    assert cell(page, "TR7-A02", "2026-10-03T22:00:00Z") == "inactive"  # Saturday night: stopped
    assert cell(page, "TR7-A02", "2026-10-27T10:00:00Z") == "unknown"  # vanished on the 27th
    shot(page, "customer")
    # a click (a tap: touch screens have no hover) says what an hour is and links its evidence
    heat = page.locator('table.heat[data-instance="TR7-A02"]')
    heat.locator('tr[data-day="2026-10-03"] td').nth(22).click()
    pick = heat.locator("xpath=following-sibling::p[1]")
    assert pick.inner_text().startswith("2026-10-03T22:00:00Z: inactive")
    heat.locator('tr[data-day="2026-10-27"] td').nth(10).click()
    assert pick.inner_text() == "2026-10-27T10:00:00Z: unknown" and pick.locator("a").count() == 0
    heat.locator('tr[data-day="2026-10-03"] td').nth(22).click()
    pick.locator("a").click()
    page.wait_for_selector("pre.jws")
    assert "/ui/p/acme/instances/TR7-A02/evidence?hour=2026-10-03T22" in page.url
    page.goto("/ui/p/acme/customers/c1?month=2026-10")
    # and from the keyboard: one tab stop per map, arrows move and say each hour (UX review: the
    # cells were mouse-only)
    heat = page.locator('table.heat[data-instance="TR7-A02"]')
    pick = heat.locator("xpath=following-sibling::p[1]")
    first = heat.locator('tr[data-day="2026-10-01"] td').first
    assert first.get_attribute("tabindex") == "0"
    assert heat.locator('td[tabindex="0"]').count() == 1
    first.focus()
    for key in ["ArrowDown", "ArrowDown", *["ArrowRight"] * 22]:
        page.keyboard.press(key)
    assert pick.inner_text().startswith("2026-10-03T22:00:00Z: inactive")
    page.keyboard.press("Enter")
    assert pick.locator("a").count() == 1
    assert heat.locator('td[tabindex="0"]').count() == 1  # still one tab stop, where the focus is

    with page.expect_download() as dl:
        page.click("#pdf")
    data = Path(dl.value.path()).read_bytes()
    assert data.startswith(b"%PDF-")
    assert "Alpine Logistics AG" in pdf_text(data)

    datasets = "c => Chart.getChart(c).data.datasets.map(d => d.label)"
    # c1's TR7-A02 runs under a fixed-term licence: its hours are apart from those billed by the
    # hour, and so are the hourly ones of its downgraded day
    assert page.locator("#hours-chart").evaluate(datasets) == [
        "active hours per day", "fixed-term or device-day licence", "downgraded, not billed"]
    assert "2026-10-20T00:00:00Z → 2026-10-21T00:00:00Z" in page.locator("#downgraded-periods").inner_text()
    page.goto("/ui/p/acme/customers/c2?month=2026-10")
    assert cell(page, "TR7-B02", "2026-10-15T10:00:00Z") == "unknown"

    page.goto("/ui/p/acme/instances/TR7-A02?month=2026-10")
    assert page.locator("#declared tr").count() >= 3  # basic, and pro during the over-use
    page.click("text=Show agents per day")
    page.wait_for_selector("#agents-per-day")
    assert "dc1-agent" in page.inner_text("#agents-per-day")
    shot(page, "instance")
    page.click("text=Signed heartbeats of that hour")
    assert page.locator("pre.jws").count() >= 1
    shot(page, "evidence")

    page.goto("/ui/p/acme/agents?month=2026-10")
    row = page.inner_text("#agents tr[data-kid]:has-text('cloud-agent')")
    assert "gaps 1" in row
    shot(page, "agents")

    page.goto("/ui/p/acme/planner/c1?month=2026-10&fixed_price=20")
    assert page.locator("#plan tr[data-license]").count() >= 1
    shot(page, "planner")
    page.goto("/ui/p/acme/audit")
    shot(page, "audit")


def test_another_providers_customer_is_forbidden(browser: Browser, base_url: str) -> None:
    page = signed_in(browser, base_url, "ann")
    resp = page.goto("/ui/p/beta/customers/z1")
    assert resp is not None and resp.status == 403
    assert "Zulu Secret" not in page.content()
    bob = signed_in(browser, base_url, "bob")
    assert bob.goto("/ui/p/acme/customers/c1").status == 403


def test_vendor_view(browser: Browser, base_url: str) -> None:
    page = signed_in(browser, base_url, "ven")
    assert page.url.endswith("/ui/vendor")
    page.goto("/ui/vendor?month=2026-10")
    assert page.locator("#providers tr[data-provider]").count() == 2
    assert "0.0450" not in page.content()
    shot(page, "vendor")


def test_admin_records_a_payment_failure_through_the_form(browser: Browser, base_url: str) -> None:
    page = signed_in(browser, base_url, "ann")
    page.goto("/ui/p/acme/customers/c3?month=2026-10")
    page.fill("#payment-failed input[name=email]", "ap@coastal.example")
    asked: list[str] = []
    # it asks first (UX review: one click mailed the customer); dismissed, nothing is recorded
    page.once("dialog", lambda d: (asked.append(d.message), d.dismiss()))
    page.click("#payment-failed button")
    assert asked and "Record a payment failure for Coastal" in asked[0]
    assert "payment_failed" not in page.content()
    page.once("dialog", lambda d: d.accept())
    page.click("#payment-failed button")
    page.wait_for_url("**/customers/c3?month=2026-10")
    assert page.url.endswith("/ui/p/acme/customers/c3?month=2026-10")  # the month it showed
    assert "overdue" in page.inner_text("#account-state")
    assert "payment_failed" in page.inner_text("#account-events")
    shot(page, "account")
    page.goto("/ui/p/acme?month=2026-10")
    assert page.locator("#alerts tr[data-type=account_overdue]").count() == 1
    page.goto("/ui/p/acme/customers/c3")
    page.click("#paid button")
    assert "active" in page.inner_text("#account-state")
