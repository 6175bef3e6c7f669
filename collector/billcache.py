"""The cache of months' own bills and quarantined digests: one computation per change, fair bounds."""

import json
import threading
from collections.abc import Callable
from typing import Any

import msgspec

from collector import fairbound
from collector.singleflight import MISSING, Flights

Texts = tuple[bytes | str, bytes | str]  # a month's usage and invoice, encoded

SIZE = 4096  # entries; a month of 2,000 instances is ~0.8 MB of JSON, so BYTES holds the bills
BYTES = 256 * 1024 * 1024
PER_PROVIDER = 16  # months a provider keeps before its own oldest go (collector/fairbound.py)
# Kept as JSON so that every caller gets its own copy; msgspec's, not the json module's: a month
# of 2,000 instances is two 0.4 MB documents, 9.5 -> 2.7 ms to encode and decode.
_JSON = msgspec.json.Decoder()
_cache: dict[tuple[Any, ...], Texts] = {}
_quarantine: dict[tuple[Any, ...], frozenset[str]] = {}
_flights = Flights()  # one computation of a bill for the callers asking at once
_lock = threading.Lock()


def bill(key: tuple[Any, ...], compute: Callable[[], tuple[Any, Any]]) -> tuple[Any, Any]:
    """(usage, invoice) of ``key`` (database, provider, month, then what the bill depends on):
    remembered, or computed by ``compute`` once however many callers ask at the same time."""
    with _lock:
        hit = _cache.get(key)
    if hit is None:

        def stored() -> Any:
            with _lock:
                return _cache.get(key, MISSING)

        def make() -> Texts:
            usage, invoice = compute()
            texts = (encode(usage), encode(invoice))
            with _lock:
                _remember(_cache, key, texts)
            return texts

        hit = _flights.once(key, stored, make)
    return decode(hit[0]), decode(hit[1])


def quarantined(key: tuple[Any, ...], compute: Callable[[], frozenset[str]]) -> frozenset[str]:
    with _lock:
        hit = _quarantine.get(key)
    if hit is None:
        hit = compute()
        remember_quarantined(key, hit)
    return hit


def remember_quarantined(key: tuple[Any, ...], digests: frozenset[str]) -> None:
    with _lock:
        _remember(_quarantine, key, digests)


def clear() -> None:
    """Forget every result (tests, benchmarks: compute again from the store)."""
    with _lock:
        _cache.clear()
        _quarantine.clear()


def _remember(cache: dict[tuple[Any, ...], Any], key: tuple[Any, ...], value: Any) -> None:
    """Store (the lock held). Keys start (database, provider, month): an entry of the same month
    with other log sizes or catalog is superseded (the log only grows), then the bound of
    collector/fairbound.py applies, in bytes for the bills: a vendor's GET /metrics reads every
    provider's bill, and with a bound of 32 entries 40 providers made each scrape compute them all
    again."""
    for old in [k for k in cache if k[:3] == key[:3] and k != key]:
        del cache[old]
    cache[key] = value
    fairbound.trim(cache, key, peers=lambda k: True, owner=lambda k: k[:2], per_owner=PER_PROVIDER,
                   total=SIZE, weight=_weight if cache is _cache else None, max_weight=BYTES)


def _weight(texts: Texts) -> int:
    return len(texts[0]) + len(texts[1])


def encode(doc: Any) -> bytes | str:
    try:
        return msgspec.json.encode(doc)
    except UnicodeEncodeError:
        # A lone surrogate (an escaped "\ud800" in a catalog id) has no UTF-8: msgspec refuses
        # it, the json module escapes it, as before msgspec
        return json.dumps(doc)


def decode(text: bytes | str) -> Any:
    return _JSON.decode(text) if isinstance(text, bytes) else json.loads(text)
