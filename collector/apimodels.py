"""The read API's response shapes as pydantic models: what /openapi.json publishes for each route.

They document; they do not serialise. The routes still return plain JSON built where the data
is (validating 2,000 instances' days through pydantic on every request would cost more than the
query), so the published schema could drift from what is sent: every model forbids unknown
members when it checks, and every answer the test suite receives is checked against its route's
model (tests/_seed.py), which fails on a member added, dropped or retyped on either side.
Times are RFC 3339 UTC text (`2026-11-01T00:00:00Z`), money is decimal text ("5.40").
"""

from collections.abc import Iterable, Iterator
from typing import Annotated, Any, Literal

from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from starlette.routing import BaseRoute


def _open(schema: dict[str, Any]) -> None:
    # Published without additionalProperties: false: v1 may add members, and a client ignores
    # those it does not know; the tests' check still forbids any the model does not name.
    schema.pop("additionalProperties", None)


class _Shape(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra=_open)


class Provider(_Shape):
    id: str
    name: str | None
    currency: str | None


class Customer(_Shape):
    """billing-v1.md §7 catalog customer, with the downgraded periods billing applies (§8; not for
    the vendor's token)."""

    id: str
    name: str
    downgraded: list[tuple[str, str | None]] | None = Field(
        None, description="[from, to] periods, to null for open-ended; left out for the vendor"
    )


class CapacityEntry(_Shape):
    model_config = ConfigDict(extra="forbid", json_schema_extra=_open, populate_by_name=True)
    from_: str = Field(alias="from")
    bundle: str | None = None
    bandwidth_mbps: int | None = None
    vservices: int | None = None


class License(_Shape):
    """billing-v1.md §7 catalog license."""

    id: str
    customer: str
    instance: str
    model: Literal["payg", "fixed"]
    unit: Literal["hour", "device_day"]
    start: str
    end: str | None
    capacity: list[CapacityEntry]
    pack: str | None = Field(None, description="device_day licenses only")
    day_counts: Literal["assigned", "active"] | None = Field(None, description="device_day licenses only")


class DayHours(_Shape):
    active_hours: int
    seen_hours: int


class InstanceDays(_Shape):
    instance: str
    days: dict[str, DayHours] = Field(
        description="UTC day (YYYY-MM-DD) -> hours; days without any hour are left out"
    )


_NEXT = "pass it as `after` for the next page; null when nothing follows (always null without `limit`)"


class Instances(_Shape):
    provider: str
    month: str
    instances: list[InstanceDays] = Field(description="by instance id")
    next_after: str | None = Field(description=f"the last instance id of this page: {_NEXT}")


class Chain(_Shape):
    """A key's chain report for the month (billing-v1.md §7 `chains`), with clock_back seqs."""

    agent: str
    first_seq: int
    last_seq: int
    gaps: list[tuple[int, int]]
    forks: list[int]
    breaks: list[int]
    clock_back: list[int]


class AgentHealth(_Shape):
    kid: str
    name: str
    enrolled_at: str
    revoked_at: str | None
    last_heartbeat: str | None
    last_seq: int | None
    silent: bool = Field(description="the current month only: no heartbeat for 3 intervals")
    chain: Chain | None = Field(description="null when the key has no heartbeat in the month")
    healthy: bool


class Agents(_Shape):
    provider: str
    month: str
    agents: list[AgentHealth] = Field(description="by kid")
    next_after: str | None = Field(description=f"the last kid of this page: {_NEXT}")


class _SeqAlert(_Shape):
    agent: str
    name: str
    seq: int


class ForkAlert(_SeqAlert):
    type: Literal["fork"]


class BreakAlert(_SeqAlert):
    type: Literal["break"]


class ClockBackAlert(_SeqAlert):
    type: Literal["clock_back"]


class SilentAgentAlert(_Shape):
    type: Literal["silent_agent"]
    agent: str
    name: str
    last_heartbeat: str | None


class AcrossMonthsAlert(_Shape):
    type: Literal["fork_across_months", "clock_back_across_months", "break_across_months"]
    agent: str
    month_before: str
    seqs: list[int]


class CloneAlert(_Shape):
    type: Literal["clone"]
    instance: str
    hour: str = Field(description="the run's first hour")
    until: str = Field(description="the end of its last hour (exclusive)")
    hours: int
    vms: tuple[str, str]


class PricingErrorAlert(_Shape):
    type: Literal["pricing_error"]
    license: str | None
    capacity: Any = Field(description="the capacity no rate prices, as the catalog wrote it")
    detail: str


class UnlicensedAlert(_Shape):
    type: Literal["unlicensed"]
    instance: str
    hours: int


class OverCapacityAlert(_Shape):
    type: Literal["over_capacity"]
    instance: str
    license: str
    customer: str


class NoPlatformLicenseAlert(_Shape):
    """PAYG hours of the license outside every platform license of the provider (billed, flagged)."""

    type: Literal["no_platform_license"]
    instance: str
    license: str
    customer: str


class AccountAlert(_Shape):
    """A customer's account overdue or downgraded now (billing-v1.md §8), whatever the month."""

    type: Literal["account_overdue", "account_downgraded"]
    customer: str
    since: str = Field(description="the failed payment that started the unpaid episode")


Alert = Annotated[
    ForkAlert | BreakAlert | ClockBackAlert | SilentAgentAlert | AcrossMonthsAlert | CloneAlert
    | PricingErrorAlert | UnlicensedAlert | OverCapacityAlert | NoPlatformLicenseAlert | AccountAlert,
    Field(discriminator="type"),
]


class Alerts(_Shape):
    provider: str
    month: str
    alerts: list[Alert] = Field(description="with `limit` or `after`: by type, then paging key")
    next_after: str | None = Field(description=f"the paging key of this page's last alert: {_NEXT}")


class InvoiceMonth(_Shape):
    month: str
    closed: bool


class InvoiceLine(_Shape):
    """billing-v1.md §7 invoice line; `adjusts` names the closed month an adjustment line corrects."""

    customer: str
    license: str
    instance: str
    bundle: str | None
    bandwidth_mbps: int | None
    vservices: int | None
    quantity: int
    price: str
    amount: str
    adjusts: str | None


class DeviceDayRow(_Shape):
    customer: str
    pack: str
    device_days: int
    months: int
    price: str
    amount: str
    adjusts: str | None = Field(None, description="on adjustment rows: the closed month corrected")


class Invoice(_Shape):
    """billing-v1.md §7 `invoice.json`: a closed month's billed invoice, else the estimate."""

    provider: str
    month: str
    currency: str
    lines: list[InvoiceLine]
    device_days: list[DeviceDayRow]
    totals: dict[str, str]
    total: str


class ErrorBody(_Shape):
    detail: str


class InvalidItem(_Shape):
    loc: list[str | int]
    msg: str
    type: str


class InvalidBody(_Shape):
    """A 422: the request's own validation (where and why, collector/server.py `_invalid`) or a
    route's text for a value it refused. Declared as ErrorBody alone, a generated client failed
    on the list (an API review)."""

    detail: str | list[InvalidItem]


class RetiredKey(_Shape):
    key: str  # verifier key, name+keyid+base64
    retired_at: str
    # the hand-over signed note (protocol/keyhandover.py); null for a key replaced without one
    statement: str | None
    replaced: str | None = None  # `tr7-collector key replace`: why (the old key lost or untrusted)


class CollectorKey(_Shape):
    """GET /v1/log/key: the checkpoint key now, and every retired one, oldest first."""

    key: str
    retired: list[RetiredKey]


# Each read route's 200 body: the routes declare it, the tests check every answer against it.
RESPONSES: dict[str, Any] = {
    "/v1/providers": list[Provider],
    "/v1/providers/{provider}/customers": list[Customer],
    "/v1/providers/{provider}/licenses": list[License],
    "/v1/providers/{provider}/instances": Instances,
    "/v1/providers/{provider}/agents": Agents,
    "/v1/providers/{provider}/alerts": Alerts,
    "/v1/providers/{provider}/invoices": list[InvoiceMonth],
    "/v1/providers/{provider}/invoices/{month}": Invoice,
}


_ERRORS = {
    401: "no API token, or an unknown one",
    403: "the token may not read this provider, or this route",
    404: "no such provider (or nothing of it to show)",
}


def errors(why: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """The `responses` of a route's error statuses, each a {"detail": text} body (for OpenAPI); a
    422's detail may also be the validation's list."""
    return {code: {"model": InvalidBody if code == 422 else ErrorBody, "description": text}
            for code, text in sorted(why.items())}


def json_errors(responses: dict[int | str, dict[str, Any]]) -> dict[int | str, dict[str, Any]]:
    """The error bodies of a route that answers another type (the checkpoint's text/plain) declared
    as the JSON they are: FastAPI files a `model` under the route's own media type. Given to the
    route's decorator (FastAPI reads its models there once), and to the guards added after."""
    for code, response in responses.items():
        model = response.get("model")
        if model is not None and not str(code).startswith("2"):
            del response["model"]
            ref = {"$ref": f"#/components/schemas/{model.__name__}"}  # ErrorBody: other routes list it
            response.setdefault("content", {})["application/json"] = {"schema": ref}
    return responses


# Every API route answers these (collector/readapi.py resolve_scope and roles).
AUTH_ERRORS = {401: _ERRORS[401], 403: "the token's role or provider may not use this route"}


def documented(path: str) -> dict[int | str, dict[str, Any]]:
    """The `responses` argument of a route: its 200 body's model and its errors, for OpenAPI only."""
    out: dict[int | str, dict[str, Any]] = {200: {"model": RESPONSES["/v1" + path]}}
    errors = dict(_ERRORS)
    if path.endswith(("/instances", "/agents", "/alerts", "/{month}")):
        errors[400] = "the month is not YYYY-MM"
    if path.endswith("/{month}"):
        errors[409] = "the catalog cannot price the month (billing-v1.md §4): no invoice, not a wrong one"
    for code, why in sorted(errors.items()):
        out[code] = {"model": ErrorBody, "description": why}
    return out


def check(path: str, body: bytes) -> None:
    """Validate one 200 answer of a documented route (tests): raises pydantic.ValidationError."""
    TypeAdapter(RESPONSES[path]).validate_json(body, strict=True)


def api_routes(routes: Iterable[BaseRoute]) -> Iterator[APIRoute]:
    """Every API route of an app (``app.routes``), those of included routers too: FastAPI 0.16x
    keeps an included router as one entry (its `original_router`), where older ones copied its
    routes in, and the guards' statuses were declared, and checked by the tests, on the app's own
    ten routes only (an API review)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif (router := getattr(route, "original_router", None)) is not None:
            yield from api_routes(router.routes)
