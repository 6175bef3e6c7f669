"""The read API's 200 bodies as pydantic models: what /openapi.json publishes for each read route.

They document; they do not serialise. The routes still return plain JSON built where the data
is (validating 2,000 instances' days through pydantic on every request would cost more than the
query), so the published schema could drift from what is sent: every model forbids unknown
members when it checks (collector/apidoc.py Shape), and every answer the test suite receives is
checked against its route's model (tests/_seed.py), which fails on a member added, dropped or
retyped on either side. Times are RFC 3339 UTC text (`2026-11-01T00:00:00Z`), money is decimal
text ("5.40").
"""

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, TypeAdapter

from collector.apidoc import READ_ERRORS, ErrorBody, Shape


class Provider(Shape):
    id: str
    name: str | None
    currency: str | None


class Customer(Shape):
    """billing-v1.md §7 catalog customer, with the downgraded periods billing applies (§8; not for
    the vendor's token)."""

    id: str
    name: str
    downgraded: list[tuple[str, str | None]] | None = Field(
        None, description="[from, to] periods, to null for open-ended; left out for the vendor"
    )


class CapacityEntry(Shape):
    model_config = ConfigDict(populate_by_name=True)  # Shape's config too: pydantic merges them
    from_: str = Field(alias="from")
    bundle: str | None = None
    bandwidth_mbps: int | None = None
    vservices: int | None = None


class License(Shape):
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


class DayHours(Shape):
    active_hours: int
    seen_hours: int


class InstanceDays(Shape):
    instance: str
    days: dict[str, DayHours] = Field(
        description="UTC day (YYYY-MM-DD) -> hours; days without any hour are left out"
    )


_NEXT = "pass it as `after` for the next page; null when nothing follows (always null without `limit`)"


class Instances(Shape):
    provider: str
    month: str
    instances: list[InstanceDays] = Field(description="by instance id")
    next_after: str | None = Field(description=f"the last instance id of this page: {_NEXT}")


class Chain(Shape):
    """A key's chain report for the month (billing-v1.md §7 `chains`), with clock_back seqs."""

    agent: str
    first_seq: int
    last_seq: int
    gaps: list[tuple[int, int]]
    forks: list[int]
    breaks: list[int]
    clock_back: list[int]


class AgentHealth(Shape):
    kid: str
    name: str
    enrolled_at: str
    revoked_at: str | None
    last_heartbeat: str | None
    last_seq: int | None
    silent: bool = Field(description="the current month only: no heartbeat for 3 intervals")
    chain: Chain | None = Field(description="null when the key has no heartbeat in the month")
    healthy: bool


class Agents(Shape):
    provider: str
    month: str
    agents: list[AgentHealth] = Field(description="by kid")
    next_after: str | None = Field(description=f"the last kid of this page: {_NEXT}")


class _SeqAlert(Shape):
    agent: str
    name: str
    seq: int


class ForkAlert(_SeqAlert):
    type: Literal["fork"]


class BreakAlert(_SeqAlert):
    type: Literal["break"]


class ClockBackAlert(_SeqAlert):
    type: Literal["clock_back"]


class SilentAgentAlert(Shape):
    type: Literal["silent_agent"]
    agent: str
    name: str
    last_heartbeat: str | None


class AcrossMonthsAlert(Shape):
    type: Literal["fork_across_months", "clock_back_across_months", "break_across_months"]
    agent: str
    month_before: str
    seqs: list[int]


class CloneAlert(Shape):
    type: Literal["clone"]
    instance: str
    hour: str = Field(description="the run's first hour")
    until: str = Field(description="the end of its last hour (exclusive)")
    hours: int
    vms: tuple[str, str]


class PricingErrorAlert(Shape):
    type: Literal["pricing_error"]
    license: str | None
    capacity: Any = Field(description="the capacity no rate prices, as the catalog wrote it")
    detail: str


class UnlicensedAlert(Shape):
    type: Literal["unlicensed"]
    instance: str
    hours: int


class OverCapacityAlert(Shape):
    type: Literal["over_capacity"]
    instance: str
    license: str
    customer: str


class NoPlatformLicenseAlert(Shape):
    """PAYG hours of the license outside every platform license of the provider (billed, flagged)."""

    type: Literal["no_platform_license"]
    instance: str
    license: str
    customer: str


class AccountAlert(Shape):
    """A customer's account overdue or downgraded now (billing-v1.md §8), whatever the month."""

    type: Literal["account_overdue", "account_downgraded"]
    customer: str
    since: str = Field(description="the failed payment that started the unpaid episode")


Alert = Annotated[
    ForkAlert | BreakAlert | ClockBackAlert | SilentAgentAlert | AcrossMonthsAlert | CloneAlert
    | PricingErrorAlert | UnlicensedAlert | OverCapacityAlert | NoPlatformLicenseAlert | AccountAlert,
    Field(discriminator="type"),
]


class Alerts(Shape):
    provider: str
    month: str
    alerts: list[Alert] = Field(description="with `limit` or `after`: by type, then paging key")
    next_after: str | None = Field(description=f"the paging key of this page's last alert: {_NEXT}")


class InvoiceMonth(Shape):
    month: str
    closed: bool


class InvoiceLine(Shape):
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


class DeviceDayRow(Shape):
    customer: str
    pack: str
    device_days: int
    months: int
    price: str
    amount: str
    adjusts: str | None = Field(None, description="on adjustment rows: the closed month corrected")


class Invoice(Shape):
    """billing-v1.md §7 `invoice.json`: a closed month's billed invoice, else the estimate."""

    provider: str
    month: str
    currency: str
    lines: list[InvoiceLine]
    device_days: list[DeviceDayRow]
    totals: dict[str, str]
    total: str


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


def documented(path: str) -> dict[int | str, dict[str, Any]]:
    """The `responses` argument of a route: its 200 body's model and its errors, for OpenAPI only."""
    out: dict[int | str, dict[str, Any]] = {200: {"model": RESPONSES["/v1" + path]}}
    errors = dict(READ_ERRORS)
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
