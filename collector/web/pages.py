"""Sign-in, overview and invoice downloads; a customer's own page is in customer.py."""

import secrets
import time
from typing import Any

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import RedirectResponse, Response

from billing import PricingError
from collector import accounting, db, render, roles
from collector.accounts import api as acc_api
from collector.accounts import store as acc_store
from collector.web import auth, data, errorpage, throttle
from collector.web.advice import ADVICE
from collector.web.common import SessionDep, attachment, conn, month_param, provider_page
from collector.web.common import render as page
from collector.web.customer import known_customer
from protocol.timefmt import month_bounds

router = APIRouter(prefix="/ui", include_in_schema=False)  # pages: not in /openapi.json


@router.get("/login")
def login_form(
    request: Request, error: str | None = None, next: str | None = None, ended: str | None = None,
    lost: str | None = None,
) -> Response:
    token = request.cookies.get(auth.LOGIN_COOKIE) or secrets.token_urlsafe(24)
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


def _refused(request: Request, message: str, retry_after: int, username: str, back: str | None) -> Response:
    """The sign-in form again, with why, as a 429 that says when to retry."""
    resp = _form_again(request, 429, refused=message, username=username, next=back)
    resp.headers["Retry-After"] = str(retry_after)
    return resp


def _form_again(request: Request, status: int, **shown: str | None) -> Response:
    """The sign-in form answered to a refused POST: the same login cookie, the user name kept."""
    token = request.cookies.get(auth.LOGIN_COOKIE) or secrets.token_urlsafe(24)
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
        known_customer(names, customer, inv["totals"])
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
