"""The billing catalog (billing-v1.md §7): strict validation into immutable, ready-to-use records."""

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from billing.errors import CatalogError
from billing.money import MONEY_RE
from protocol.errors import ProtocolError
from protocol.payload import INSTANCE_RE, MAX_INT
from protocol.timefmt import parse_time

Period = tuple[int, int | None]  # [start, end) in epoch seconds; None is an open end


@dataclass(frozen=True, slots=True)
class CapacityEntry:
    start: int  # the entry's `from`
    bundle: str | None
    bandwidth_mbps: int | None
    vservices: int | None


@dataclass(frozen=True, slots=True)
class License:
    id: str
    customer: str
    instance: str
    model: str  # payg | fixed
    unit: str  # hour | device_day
    start: int
    end: int | None
    capacity: tuple[CapacityEntry, ...]
    pack: str | None = None
    day_counts: str | None = None  # assigned | active


@dataclass(frozen=True, slots=True)
class Customer:
    id: str
    name: str
    downgraded: tuple[Period, ...]  # merged: overlapping or touching periods are one period


@dataclass(frozen=True, slots=True)
class PlatformLicense:
    id: str
    valid_from: int
    valid_to: int | None


@dataclass(frozen=True, slots=True)
class Rate:
    key: str  # bundle (hourly) or pack (monthly)
    max_bandwidth_mbps: int | None  # None for monthly rates
    price: Decimal
    text: str  # the rate card's string as written: it is what invoices show


@dataclass(frozen=True, slots=True)
class Catalog:
    provider: str
    provider_name: str
    currency: str
    gap_mode: str  # evidence | bridge
    max_hours: int
    bundles: tuple[str, ...]
    platform_licenses: tuple[PlatformLicense, ...]
    customers: Mapping[str, Customer]
    licenses: tuple[License, ...]
    hourly: tuple[Rate, ...]
    monthly: Mapping[str, Rate]


def _at(path: str, name: str | int) -> str:
    if isinstance(name, int):
        return f"{path}[{name}]"
    return f"{path}.{name}" if path else name


def _object(v: Any, path: str, required: set[str],
            optional: frozenset[str] = frozenset()) -> Mapping[str, Any]:
    # type() first: an ABC isinstance check costs more than the rest of this for a plain dict
    if type(v) is not dict and not isinstance(v, Mapping):
        raise CatalogError(path or "catalog", "must be an object")
    for name in v:
        if name not in required and name not in optional:
            raise CatalogError(_at(path, str(name)), "unknown member")
    if not v.keys() >= required:
        for name in sorted(required):
            if name not in v:
                raise CatalogError(_at(path, name), "missing")
    return v


def _list(v: Any, path: str) -> list[Any]:
    if not isinstance(v, list):
        raise CatalogError(path, "must be an array")
    return v


def _str(v: Any, path: str) -> str:
    if not isinstance(v, str) or not v:
        raise CatalogError(path, "must be a non-empty string")
    return v


def _int(v: Any, path: str, minimum: int = 0) -> int:
    if type(v) is not int or not minimum <= v <= MAX_INT:
        raise CatalogError(path, f"must be an integer from {minimum} to 2^63-1")
    return v


def _opt_int(obj: Mapping[str, Any], name: str, path: str) -> int | None:
    return _int(obj[name], _at(path, name)) if name in obj else None


def _time(v: Any, path: str, nullable: bool = False, seen: dict[str, int] | None = None) -> int | None:
    """``seen``: the times already parsed in this catalog (licenses repeat the same few)."""
    if v is None and nullable:
        return None
    if seen is not None and type(v) is str and v in seen:
        return seen[v]
    try:
        t = parse_time(v, path)
        if seen is not None:
            seen[v] = t
        return t
    except ProtocolError:
        raise CatalogError(path, "must be a UTC time YYYY-MM-DDTHH:MM:SSZ"
                           + (" or null" if nullable else "")) from None


def _period(start: int, end: int | None, path: str) -> None:
    if end is not None and end <= start:
        raise CatalogError(path, "the end must be after the start")


def _money(v: Any, path: str) -> Decimal:
    if not isinstance(v, str) or not MONEY_RE.match(v):
        raise CatalogError(path, "must be a decimal string such as \"0.0450\"")
    whole, _, frac = v.partition(".")
    # Within Decimal's 28 digits once multiplied by a month's hours and rounded to cents (a price
    # of 30 digits raised InvalidOperation from the rounding).
    if len(whole.lstrip("0")) > 12 or len(frac) > 10:
        raise CatalogError(path, "at most 12 digits before the point and 10 after")
    return Decimal(v)


def _enum(v: Any, path: str, allowed: tuple[str, ...]) -> str:
    if not isinstance(v, str) or v not in allowed:
        raise CatalogError(path, f"must be one of {', '.join(allowed)}")
    return v


def _unique(ids: list[str], path: str, what: str, member: str | None = "id") -> None:
    seen: set[str] = set()
    for i, v in enumerate(ids):
        if v in seen:
            where = _at(path, i) if member is None else _at(_at(path, i), member)
            raise CatalogError(where, f"duplicate {what} {v!r}")
        seen.add(v)


def _merge(periods: list[Period]) -> tuple[Period, ...]:
    """Union of periods: a day inside two touching periods lies wholly inside a downgraded period."""
    out: list[list[Any]] = []
    for s, e in sorted(periods, key=lambda p: p[0]):
        if out and (out[-1][1] is None or s <= out[-1][1]):
            if out[-1][1] is not None and (e is None or e > out[-1][1]):
                out[-1][1] = e
        else:
            out.append([s, e])
    return tuple((s, e) for s, e in out)


def _policy(v: Any) -> tuple[str, int]:
    policy = _object(v, "policy", set(), frozenset({"gaps"}))
    if "gaps" not in policy:
        return "evidence", 0
    gaps = _object(policy["gaps"], "policy.gaps", {"mode"}, frozenset({"max_hours"}))
    mode = _enum(gaps["mode"], "policy.gaps.mode", ("evidence", "bridge"))
    if mode == "evidence":
        if "max_hours" in gaps:
            raise CatalogError("policy.gaps.max_hours", "only for mode bridge")
        return mode, 0
    if "max_hours" not in gaps:
        raise CatalogError("policy.gaps.max_hours", "missing (mode bridge needs it)")
    return mode, _int(gaps["max_hours"], "policy.gaps.max_hours", 1)


def _customers(v: Any) -> dict[str, Customer]:
    out: dict[str, Customer] = {}
    items = _list(v, "customers")
    _unique([_str(_object(c, _at("customers", i), {"id", "name"}, frozenset({"downgraded"}))["id"],
                  _at(_at("customers", i), "id")) for i, c in enumerate(items)], "customers", "customer id")
    for i, c in enumerate(items):
        path = _at("customers", i)
        periods: list[Period] = []
        for j, p in enumerate(_list(c.get("downgraded", []), _at(path, "downgraded"))):
            ppath = _at(_at(path, "downgraded"), j)
            if not isinstance(p, list) or len(p) != 2:
                raise CatalogError(ppath, "must be a [from, to] pair")
            start = _time(p[0], _at(ppath, 0))
            end = _time(p[1], _at(ppath, 1), nullable=True)
            assert start is not None
            _period(start, end, ppath)
            periods.append((start, end))
        out[c["id"]] = Customer(c["id"], _str(c["name"], _at(path, "name")), _merge(periods))
    return out


def _capacity(v: Any, path: str, bundles: tuple[str, ...], seen: dict[str, int]) -> tuple[CapacityEntry, ...]:
    entries: list[CapacityEntry] = []
    for i, e in enumerate(_list(v, path)):
        epath = _at(path, i)
        _object(e, epath, {"from"}, frozenset({"bundle", "bandwidth_mbps", "vservices"}))
        start = _time(e["from"], _at(epath, "from"), seen=seen)
        assert start is not None
        if entries and start <= entries[-1].start:
            raise CatalogError(_at(epath, "from"), "capacity entries must be sorted by from, strictly")
        bundle = None
        if "bundle" in e:
            bundle = _str(e["bundle"], _at(epath, "bundle"))
            if bundle not in bundles:
                raise CatalogError(_at(epath, "bundle"), f"{bundle!r} is not in bundles")
        entries.append(CapacityEntry(start, bundle, _opt_int(e, "bandwidth_mbps", epath),
                                     _opt_int(e, "vservices", epath)))
    return tuple(entries)


_LICENSE = {"id", "customer", "instance", "model", "unit", "start", "end", "capacity"}


def _license(lic: Any, path: str, customers: Mapping[str, Customer], bundles: tuple[str, ...],
             packs: Mapping[str, Rate], seen: dict[str, int]) -> License:
    _object(lic, path, _LICENSE, frozenset({"pack", "day_counts"}))
    lid = _str(lic["id"], _at(path, "id"))
    customer = _str(lic["customer"], _at(path, "customer"))
    if customer not in customers:
        raise CatalogError(_at(path, "customer"), f"no customer {customer!r}")
    instance = lic["instance"]
    if not isinstance(instance, str) or not INSTANCE_RE.match(instance):
        raise CatalogError(_at(path, "instance"), "must be 1..64 characters of [A-Za-z0-9._:-]")
    model = _enum(lic["model"], _at(path, "model"), ("payg", "fixed"))
    unit = _enum(lic["unit"], _at(path, "unit"), ("hour", "device_day"))
    start = _time(lic["start"], _at(path, "start"), seen=seen)
    assert start is not None
    end = _time(lic["end"], _at(path, "end"), nullable=True, seen=seen)
    _period(start, end, _at(path, "end"))
    capacity = _capacity(lic["capacity"], _at(path, "capacity"), bundles, seen)
    pack = day_counts = None
    if unit == "device_day":
        for name in ("pack", "day_counts"):
            if name not in lic:
                raise CatalogError(_at(path, name), "missing (unit device_day needs it)")
        pack = _str(lic["pack"], _at(path, "pack"))
        if pack not in packs:
            raise CatalogError(_at(path, "pack"), f"no rates.monthly entry for pack {pack!r}")
        day_counts = _enum(lic["day_counts"], _at(path, "day_counts"), ("assigned", "active"))
    else:
        for name in ("pack", "day_counts"):
            if name in lic:
                raise CatalogError(_at(path, name), "only for unit device_day")
    return License(lid, customer, instance, model, unit, start, end, capacity, pack, day_counts)


def _rates(v: Any, bundles: tuple[str, ...]) -> tuple[tuple[Rate, ...], dict[str, Rate]]:
    rates = _object(v, "rates", {"hourly", "monthly"})
    hourly: list[Rate] = []
    seen: set[tuple[str, int]] = set()
    for i, r in enumerate(_list(rates["hourly"], "rates.hourly")):
        path = _at("rates.hourly", i)
        _object(r, path, {"bundle", "max_bandwidth_mbps", "price"})
        bundle = _str(r["bundle"], _at(path, "bundle"))
        if bundle not in bundles:
            raise CatalogError(_at(path, "bundle"), f"{bundle!r} is not in bundles")
        bw = _int(r["max_bandwidth_mbps"], _at(path, "max_bandwidth_mbps"))
        if (bundle, bw) in seen:
            raise CatalogError(path, f"duplicate rate for bundle {bundle!r} up to {bw} Mbit/s")
        seen.add((bundle, bw))
        hourly.append(Rate(bundle, bw, _money(r["price"], _at(path, "price")), r["price"]))
    monthly: dict[str, Rate] = {}
    for i, r in enumerate(_list(rates["monthly"], "rates.monthly")):
        path = _at("rates.monthly", i)
        _object(r, path, {"pack", "price"})
        pack = _str(r["pack"], _at(path, "pack"))
        if pack in monthly:
            raise CatalogError(_at(path, "pack"), f"duplicate pack {pack!r}")
        monthly[pack] = Rate(pack, None, _money(r["price"], _at(path, "price")), r["price"])
    return tuple(hourly), monthly


_TOP = {"provider", "bundles", "platform_licenses", "customers", "licenses", "rates"}


def load_catalog(obj: Mapping[str, Any] | Catalog) -> Catalog:
    """Validate a catalog strictly (billing-v1.md §7); raise CatalogError naming the first bad member."""
    if isinstance(obj, Catalog):
        return obj
    top = _object(obj, "", _TOP, frozenset({"policy"}))
    prov = _object(top["provider"], "provider", {"id", "name", "currency"})
    provider = _str(prov["id"], "provider.id")
    name = _str(prov["name"], "provider.name")
    currency = _str(prov["currency"], "provider.currency")
    gap_mode, max_hours = _policy(top.get("policy", {}))
    bundles = tuple(_str(b, _at("bundles", i)) for i, b in enumerate(_list(top["bundles"], "bundles")))
    _unique(list(bundles), "bundles", "bundle", None)
    platform: list[PlatformLicense] = []
    for i, p in enumerate(_list(top["platform_licenses"], "platform_licenses")):
        path = _at("platform_licenses", i)
        _object(p, path, {"id", "valid_from", "valid_to"})
        start = _time(p["valid_from"], _at(path, "valid_from"))
        assert start is not None
        end = _time(p["valid_to"], _at(path, "valid_to"), nullable=True)
        _period(start, end, _at(path, "valid_to"))
        platform.append(PlatformLicense(_str(p["id"], _at(path, "id")), start, end))
    _unique([p.id for p in platform], "platform_licenses", "platform license id")
    customers = _customers(top["customers"])
    hourly, monthly = _rates(top["rates"], bundles)
    items = _list(top["licenses"], "licenses")
    seen: dict[str, int] = {}
    licenses = tuple(_license(lic, _at("licenses", i), customers, bundles, monthly, seen)
                     for i, lic in enumerate(items))
    _unique([lic.id for lic in licenses], "licenses", "license id")
    return Catalog(provider, name, currency, gap_mode, max_hours, bundles, tuple(platform), customers,
                   licenses, hourly, monthly)
