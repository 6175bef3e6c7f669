"""Sign-in, overview, customer page (heatmap, chart, estimate, invoices) and account actions."""

import json
import time
from typing import Any
from urllib.parse import quote

import sqlalchemy as sa
from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import RedirectResponse, Response

from billing import PricingError
from collector import accounting, db, render, roles
from collector import schema as s
from collector.accounts import api as acc_api
from collector.accounts import store as acc_store
from collector.web import auth, data, errorpage, throttle
from collector.web.advice import ADVICE
from collector.web.common import SessionDep, attachment, conn, month_param, provider_page
from collector.web.common import render as page
from protocol.timefmt import month_bounds

router = APIRouter(prefix="/ui")
MAX_HEATMAPS = 50


@router.get("/login")
def login_form(
    request: Request, error: str | None = None, next: str | None = None, ended: str | None = None,
    lost: str | None = None,
) -> Response:
    token = request.cookies.get(auth.LOGIN_COOKIE) or auth.secrets.token_urlsafe(24)
    resp = page(request, "login.html", None, login_csrf=token, error=error, next=errorpage.safe_next(next),
                ended=bool(ended), lost=bool(lost))
    resp.set_cookie(auth.LOGIN_COOKIE, token, httponly=True, samesite="strict", secure=auth.secure(request))
    return resp


@router.post("/login")
def login(
    request: Request,
    csrf: str = Form(""),
    username: str = Form(""),
    password: str = Form(""),
    token: str = Form(""),
    next: str = Form(""),  # the page asked for before signing in
) -> Response:
    auth.check_csrf(request.cookies.get(auth.LOGIN_COOKIE, ""), csrf)
    back = errorpage.safe_next(next)
    engine = request.app.state.engine
    address = request.client.host if request.client else ""
    name = "token" if token.strip() else username
    guard: throttle.SignInThrottle = request.app.state.signin_throttle
    wait = guard.attempt(address, name)
    if wait:
        return _refused(request, f"Too many failed sign-ins: try again in {-(-wait // 60)} minute(s).", wait,
                        username, back)
    try:
        with guard.checking(), conn(request) as c:
            found = auth.authenticate(c, username, password, token)
    except throttle.Busy:
        guard.not_checked(address, name)  # not checked: not a failure, nor a success
        return _refused(request, "Too many sign-ins at once: try again in a few seconds.", 5, username, back)
    if found is None:
        # the form again, its user name kept (not in a URL, where logs keep it), and why
        return _form_again(request, 401, error="1", username=username, next=back)
    scope, who = found
    guard.succeeded(address, name)  # right credentials (an appliance's token too): no failure
    if not (roles.allows(scope.role, roles.PAGES) or roles.allows(scope.role, roles.ALL_PROVIDERS)):
        # a valid token that opens no page (an appliance's): no session, and a line saying why
        return RedirectResponse("/ui/login?error=pages", status_code=303)
    sid = db.write_tx(engine, lambda c: auth.open_session(c, scope, who, int(time.time())))
    resp = RedirectResponse(back or "/ui/", status_code=303)
    resp.set_cookie(
        auth.COOKIE, sid, max_age=auth.SESSION_TTL, httponly=True, samesite="lax", secure=auth.secure(request)
    )
    resp.delete_cookie(auth.LOGIN_COOKIE)
    return resp


def _refused(request: Request, message: str, retry_after: int, username: str, back: str) -> Response:
    """The sign-in form again, with why, as a 429 that says when to retry."""
    resp = _form_again(request, 429, refused=message, username=username, next=back)
    resp.headers["Retry-After"] = str(retry_after)
    return resp


def _form_again(request: Request, status: int, **shown: str) -> Response:
    """The sign-in form answered to a refused POST: the same login cookie, the user name kept."""
    token = request.cookies.get(auth.LOGIN_COOKIE) or auth.secrets.token_urlsafe(24)
    resp = page(request, "login.html", None, login_csrf=token, **shown)
    resp.status_code = status
    resp.set_cookie(auth.LOGIN_COOKIE, token, httponly=True, samesite="strict", secure=auth.secure(request))
    return resp


@router.post("/logout")
def logout(request: Request, sess: SessionDep, csrf: str = Form("")) -> Response:
    auth.check_csrf(sess.csrf, csrf)
    db.write_tx(request.app.state.engine, lambda c: auth.close_session(c, request.cookies[auth.COOKIE]))
    resp = RedirectResponse("/ui/login", status_code=303)
    resp.delete_cookie(auth.COOKIE)
    return resp


@router.get("/")
def home(sess: SessionDep) -> Response:
    if sess.scope.vendor:
        return RedirectResponse("/ui/vendor", status_code=303)
    return RedirectResponse(f"/ui/p/{sess.scope.provider}", status_code=303)


@router.get("/p/{provider}")
def overview(provider: str, request: Request, sess: SessionDep, month: str | None = None) -> Response:
    provider_page(sess, provider)
    month, now = month_param(month), int(time.time())
    with conn(request) as c:
        doc = data.month_catalog(c, provider, month)
        names = accounting.customer_names(doc, data.catalog(c, provider))
        res = data.results(c, provider, month)
        stale = data.results_stale(c, provider, month)
        hours = data.active_hours(c, provider, month)
        running = data.running_now(c, provider, now)
        found = data.provider_alerts(c, provider, month, now)
        accounts = acc_store.states(c, provider)
        is_closed = accounting.closed(c, provider, month) is not None
    totals = res[1]["totals"] if res else {}
    # The month's customers as billed, and any other customer a line of the month bills (an
    # adjustment of a closed month for a customer the catalog has dropped since).
    ids = [cu["id"] for cu in doc.get("customers", [])]
    ids += sorted(set(totals) - set(ids))
    customers = [
        {
            "id": cid,
            "name": names.get(cid, cid),
            # None (shown as "–") when the month cannot be priced: not 0.00 (the alerts say why)
            "amount": totals.get(cid, "0.00") if res else None,
            "state": (acc_api.account_json(accounts[cid][0], None, now)["state"]
                      if cid in accounts else "active"),
        }
        for cid in ids
    ]
    return page(
        request,
        "overview.html",
        sess,
        provider=provider,
        month=month,
        customers=customers,
        currency=(res[1]["currency"] if res else ""),
        total=(res[1]["total"] if res else None),
        is_closed=is_closed,
        stale=stale,
        running=running,
        active_hours=sum(hours.values()),
        instances=len(hours),
        alerts=found,
        advice=ADVICE,
        names=names,
        has_catalog=bool(doc),
        # a month not begun shows an estimate too (licences counted by the assigned day): say so
        phase=_phase(month, now),
    )


def _phase(month: str, now: int) -> str:
    m0, m1 = month_bounds(month)
    return "future" if m0 > now else "current" if m1 > now else "past"


def _customer(names: dict[str, str], customer: str, billed: Any = ()) -> dict[str, Any]:
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
        cu = _customer(accounting.customer_names(doc, data.catalog(c, provider)), customer,
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
        late = data.late_hours(c, provider, month, customer, inv) if inv and month in closed else 0
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
        adjusted_on=accounting.first_open_after(month, set(closed)) if late else None,
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


def customer_invoice(inv: dict[str, Any], customer: str) -> dict[str, Any]:
    """The provider's invoice cut down to one customer (what that customer is sent)."""
    total = inv["totals"].get(customer, "0.00")
    return {
        **inv,
        "lines": [x for x in inv["lines"] if x["customer"] == customer],
        "device_days": [x for x in inv["device_days"] if x["customer"] == customer],
        "totals": {customer: total} if customer in inv["totals"] else {},
        "total": total,
    }


@router.get("/p/{provider}/invoices/{month}.{fmt}")
def invoice_file(
    provider: str, month: str, fmt: str, request: Request, sess: SessionDep, customer: str | None = None
) -> Response:
    provider_page(sess, provider)
    month = month_param(month)
    if fmt not in ("pdf", "csv"):
        raise HTTPException(404, "pdf or csv")
    with conn(request) as c:
        doc = data.month_catalog(c, provider, month)
        names = accounting.customer_names(doc, data.catalog(c, provider))
        estimate = accounting.closed(c, provider, month) is None
        try:  # a download is computed now, never served from the dashboards' cache
            inv = accounting.invoice(c, provider, month)
        except accounting.AccountingError as exc:
            raise HTTPException(404, str(exc)) from exc
        except PricingError as exc:
            # billing-v1.md §4: no invoice rather than a wrong one (the overview's alert says so too)
            raise HTTPException(409, f"the catalog cannot price {month}: {exc}") from exc
    if customer is not None:
        _customer(names, customer, inv["totals"])
        inv = customer_invoice(inv, customer)
    if fmt == "pdf":
        body = render.pdf_bytes(inv, names, None if customer is None else [customer], estimate=estimate,
                                provider_name=(doc.get("provider") or {}).get("name"))
    else:
        body = render.csv_bytes(inv, names, estimate=estimate)
    kind = "estimate" if estimate else "invoice"  # an open month's file is no invoice to send
    name = f"{kind}-{provider}-{month}{'-' + customer if customer else ''}.{fmt}"
    media = "application/pdf" if fmt == "pdf" else "text/csv; charset=utf-8"
    return Response(body, media_type=media, headers={"Content-Disposition": attachment(name)})
