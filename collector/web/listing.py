"""The instances page: every instance of a month with its customer, licences and hours, filtered
and paged (the overview names the first 200 running ones only)."""

import time
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from collector import accounting
from collector.web import data
from collector.web.common import SessionDep, conn, month_param, provider_page
from collector.web.common import render as page

router = APIRouter(prefix="/ui", include_in_schema=False)  # pages: not in /openapi.json
PAGE = 500  # rows a page: 2,000 instances are four pages


@router.get("/p/{provider}/instances")
def instances_page(
    provider: str, request: Request, sess: SessionDep, month: str | None = None,
    q: str = Query("", max_length=200), start: int = Query(0, ge=0),
) -> Response:
    provider_page(sess, provider)
    month, now = month_param(month), int(time.time())
    with conn(request) as c:
        doc = data.month_catalog(c, provider, month)
        hours = data.active_hours(c, provider, month)
        running = set(data.running_now(c, provider, now))
    names = accounting.customer_names(doc)
    licensed: dict[str, list[dict[str, Any]]] = {}
    for lic in doc.get("licenses", []):
        licensed.setdefault(lic["instance"], []).append(lic)
    rows = []
    for inst in sorted(set(hours) | set(licensed)):
        lics = licensed.get(inst, [])
        licences = [f"{x['id']} ({x.get('model')}, {x.get('unit', 'hour')})" for x in lics]
        customers = sorted({names.get(x["customer"], x["customer"]) for x in lics})
        row = {
            "instance": inst,
            "hours": hours.get(inst),
            "running": inst in running,
            "licences": licences,
            "customers": customers,
        }
        # one box finds an instance by its id, a licence or a customer (its name or its id)
        ids = [x["customer"] for x in lics]
        text = " ".join([inst, *licences, *customers, *ids]).casefold()
        if q.casefold() in text:
            rows.append(row)
    # a start past the end (an old link, a hand-edited one) shows the last page, not "101–100 shown"
    start = min(start, max(0, len(rows) - 1) // PAGE * PAGE)
    return page(request, "instances.html", sess, provider=provider, month=month, q=q, start=start,
                rows=rows[start : start + PAGE], total=len(rows), page_size=PAGE)
