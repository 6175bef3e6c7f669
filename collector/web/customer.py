"""A customer's page (heatmaps, chart, estimate, invoices, late hours) and its account actions."""

import json
import time
from typing import Any
from urllib.parse import quote

import sqlalchemy as sa
from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import RedirectResponse, Response

from collector import accounting, roles
from collector import schema as s
from collector.accounts import api as acc_api
from collector.accounts import store as acc_store
from collector.web import auth, data
from collector.web.common import SessionDep, conn, month_param, provider_page
from collector.web.common import render as page
from protocol.timefmt import month_bounds

router = APIRouter(prefix="/ui", include_in_schema=False)  # pages: not in /openapi.json
MAX_HEATMAPS = 50  # instances whose heatmap the page draws (a month is 744 cells each)


def known_customer(names: dict[str, str], customer: str, billed: Any = ()) -> dict[str, Any]:
    """The customer of a page or download: in the month's catalog or the latest one, or billed by
    a line of the month; 404 otherwise."""
    if customer in names or customer in billed:
        return {"id": customer, "name": names.get(customer, customer)}
    raise HTTPException(404, f"no customer {customer}")


@router.get("/p/{provider}/customers/{customer:path}")
def customer_page(
    provider: str, customer: str, request: Request, sess: SessionDep, month: str | None = None,
    error: str | None = None,
) -> Response:
    provider_page(sess, provider)
    month, now = month_param(month), int(time.time())
    with conn(request) as c:
        doc = data.month_catalog(c, provider, month)
        res = data.results(c, provider, month)
        stale = data.results_stale(c, provider, month)  # its estimate beside fresher heatmaps
        cu = known_customer(accounting.customer_names(doc, data.catalog(c, provider)), customer,
                            res[1]["totals"] if res else ())
        lics = [x for x in doc.get("licenses", []) if x["customer"] == customer]
        insts = sorted({x["instance"] for x in lics})
        # Heatmaps for the first instances only: a month is 744 cells each (instance pages have all).
        shown = insts[:MAX_HEATMAPS]
        active, seen = data.hour_sets(c, provider, month, insts)
        # The customer's hours only: an instance's hours outside this customer's license periods
        # are another customer's or unlicensed (the instance page shows all of them).
        every = doc.get("licenses", [])
        # The chart tells apart the hours billed by the hour (PAYG `hour` licences) from those of
        # fixed-term and device-day licences, and from the PAYG hours of the customer's downgraded
        # periods, active but not billed (billing-v1.md §8)
        periods = data.downgraded_periods(doc, customer)
        down = data.downgraded_hours(doc, customer, month)
        hourly = {x["id"] for x in lics if x.get("model") == "payg" and x.get("unit", "hour") == "hour"}
        mine = {x["id"] for x in lics}
        # who decides each hour, found once for the three sets below
        owners = data.hour_owners({i: active.get(i, set()) | seen.get(i, set()) for i in {*active, *seen}},
                                  every)
        by_hour = {i: {h for h in hs if owners[i][h] in hourly} for i, hs in active.items()}
        active = {i: {h for h in hs if owners[i][h] in mine} for i, hs in active.items()}
        seen = {i: {h for h in hs if owners[i][h] in mine} for i, hs in seen.items()}
        acc, email = acc_store.load(c, provider, customer)
        events = acc_store.events(c, provider, customer)
        closed = (
            c.execute(
                sa.select(s.closes.c.month)
                .where(s.closes.c.provider == provider)
                .order_by(s.closes.c.month.desc())
            )
            .scalars()
            .all()
        )
        inv = res[1] if res else None
        zero = (0, 0)
        (late, since), (late_days, days_since) = (data.late(c, provider, month, customer, inv)
                                                  if inv and month in closed else (zero, zero))
    bmax = data.bridge_max(doc)
    m0, m1 = month_bounds(month)
    n_days = (m1 - m0) // data.DAY
    daily, downgraded, other = [0] * n_days, [0] * n_days, [0] * n_days
    for i, hs in active.items():
        billed = by_hour.get(i, set())
        for h in hs:
            series = (downgraded if h in down else daily) if h in billed else other
            series[(h - m0) // data.DAY] += 1
    return page(
        request,
        "customer.html",
        sess,
        provider=provider,
        month=month,
        stale=stale,
        is_closed=month in closed,
        customer=cu,
        licenses=lics,
        heatmaps=[
            {
                "instance": i,
                "rows": data.heatmap(month, active.get(i, set()), seen.get(i, set()), bmax),
                "active": len(active.get(i, set())),
            }
            for i in shown
        ],
        hidden=len(insts) - len(shown),
        chart=json.dumps({"labels": [f"{d + 1}" for d in range(len(daily))], "values": daily,
                          "downgraded": downgraded, "other": other}),
        downgraded_hours=sum(downgraded),
        other_hours=sum(other),
        billed_hours=sum(daily),
        downgraded_periods=periods,
        # the chart is the evidence now; a closed invoice billed what had come by its close
        late_hours=late,
        invoiced_since=since,  # late hours later closes' adjustment lines invoiced already
        late_days=late_days,
        days_since=days_since,
        adjusted_on=accounting.first_open_after(month, set(closed)) if late or late_days else None,
        lines=[x for x in inv["lines"] if x["customer"] == customer] if inv else [],
        device_days=[x for x in inv["device_days"] if x["customer"] == customer] if inv else [],
        estimate=(inv["totals"].get(customer, "0.00") if inv else None),
        currency=(inv["currency"] if inv else ""),
        closed=closed,
        account=acc_api.account_json(acc, email, now),
        events=events,
        form_error=FORM_ERRORS.get(error or ""),
    )


# What the account form's redirect may ask the page to say: a code, not a text (a link could
# otherwise put any words on the provider's page).
FORM_ERRORS = {"email": "Not recorded: the reminder e-mail must be one address such as ap@customer.example "
                        "(no name, comment, list or spaces)."}


@router.post("/p/{provider}/customers/{customer:path}/account")
def account_action(
    provider: str,
    customer: str,
    request: Request,
    sess: SessionDep,
    csrf: str = Form(""),
    action: str = Form(""),
    email: str = Form(""),
    month: str = Form(""),  # the month the page showed: it shows it again after the action
) -> Response:
    auth.check_csrf(sess.csrf, csrf)
    provider_page(sess, provider)
    sess.require(roles.PAYMENTS)
    shown = f"month={month}&" if month and month_param(month) else ""
    if action not in ("failed", "paid"):
        raise HTTPException(400, "action is failed or paid")
    try:
        acc_api.record(request.app.state.engine, provider, customer, action, email or None, int(time.time()))
    except HTTPException as exc:
        if exc.status_code != 422:
            raise
        # Back to the form with the reason shown there, not a JSON error page
        return RedirectResponse(f"/ui/p/{provider}/customers/{quote(customer, safe='')}?{shown}error=email",
                                status_code=303)
    return RedirectResponse(f"/ui/p/{provider}/customers/{quote(customer, safe='')}?{shown}".rstrip("?&"),
                            status_code=303)
