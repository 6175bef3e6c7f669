"""May an instance run its PAYG services now (billing-v1.md §8)? One answer with a reason code."""

from typing import Any

from billing import load_catalog
from collector.accounts import machine as m
from protocol.timefmt import format_time

# Reason codes, stable for appliances to switch on.
OK = "ok"
NO_LICENSE = "no_license"  # no license of the instance at all (or none the caller may see)
NOT_STARTED = "license_not_started"
ENDED = "license_ended"
NO_PLATFORM = "no_platform_license"
DOWNGRADED = "account_downgraded"


def _in(start: int, end: int | None, now: int) -> bool:
    return start <= now and (end is None or now < end)


def decide(
    instance: str, catalogs: list[Any], accounts: dict[tuple[str, str], m.Account], now: int
) -> dict[str, Any]:
    """``catalogs``: the latest catalog (document or loaded) of each provider the caller may see;
    ``accounts`` by (provider, customer). A fixed-term license in force is not touched by a
    downgrade (that only stops PAYG services), but every license needs its provider's platform
    license in force."""
    answer: dict[str, Any] = {
        "instance": instance,
        "entitled": False,
        "reason": NO_LICENSE,
        "checked_at": format_time(now),
    }
    found: list[tuple[Any, Any]] = []
    for doc in catalogs:
        cat = load_catalog(doc)
        found += [(cat, lic) for lic in cat.licenses if lic.instance == instance]
    if not found:
        return answer
    current = [(c, lic) for c, lic in found if _in(lic.start, lic.end, now)]
    if not current:
        starts = [lic.start for _c, lic in found if lic.start > now]
        answer["reason"] = NOT_STARTED if starts else ENDED
        return answer
    # The license that decides, as billing decides an hour: fixed before PAYG, then the latest start.
    cat, lic = max(current, key=lambda x: (x[1].model == "fixed", x[1].start, x[1].id))
    acc = accounts.get((cat.provider, lic.customer), m.Account())
    state = m.effective(acc, now)
    answer.update(provider=cat.provider, license=lic.id, model=lic.model, account=state)
    if state == m.OVERDUE and acc.downgrade_at is not None:
        answer["grace_until"] = format_time(acc.downgrade_at)
    if not any(_in(p.valid_from, p.valid_to, now) for p in cat.platform_licenses):
        answer["reason"] = NO_PLATFORM
    elif lic.model == "payg" and state == m.DOWNGRADED:
        answer["reason"] = DOWNGRADED
    else:
        answer.update(entitled=True, reason=OK)
    return answer


# What the vendor sees: whether an instance is entitled and why, never a provider's dealings with
# its customer (collector/roles.py ACCOUNTS): no account state or grace period, and a downgrade
# for non-payment reads as the provider having suspended the license.
PROVIDER_SUSPENDED = "provider_suspended"


def for_vendor(answer: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in answer.items() if k not in ("account", "grace_until")}
    if out.get("reason") == DOWNGRADED:
        out["reason"] = PROVIDER_SUSPENDED
    return out
