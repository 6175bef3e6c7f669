"""The cache of months' own bills and quarantined digests: one computation per change, fair bounds."""

import json
import threading
from collections.abc import Callable
from typing import Any

import msgspec

from collector import fairbound

Texts = tuple[bytes | str, bytes | str]  # a month's usage and invoice, encoded

SIZE = 4096  # entries; a month of 2,000 instances is ~0.8 MB of JSON, so BYTES holds the bills
BYTES = 256 * 1024 * 1024
PER_PROVIDER = 16  # months a provider keeps before its own oldest go (collector/fairbound.py)
# Kept as JSON so that every caller gets its own copy; msgspec's, not the json module's: a month
# of 2,000 instances is two 0.4 MB documents, 9.5 -> 2.7 ms to encode and decode.
_JSON = msgspec.json.Decoder()
_cache: dict[tuple[Any, ...], Texts] = {}
_quarantine: dict[tuple[Any, ...], frozenset[str]] = {}
_computing: dict[tuple[Any, ...], threading.Event] = {}  # bills being computed, for callers that wait
_lock = threading.Lock()


def bill(key: tuple[Any, ...], compute: Callable[[], tuple[Any, Any]]) -> tuple[Any, Any]:
    """(usage, invoice) of ``key`` (database, provider, month, then what the bill depends on):
    remembered, or computed by ``compute`` once however many callers ask at the same time."""
    with _lock:
        hit = _cache.get(key)
        busy = _computing.get(key) if hit is None else None
        mine = None
        if hit is None and busy is None:
            mine = _computing[key] = threading.Event()
    if busy is not None:
        # The same bill is being computed (the start-up warm-up, another request): seconds of a
        # core at 2,000 instances, so wait for that one rather than compute it twice.
        busy.wait(timeout=300)
        with _lock:
            hit = _cache.get(key)
    if hit is not None:
        return decode(hit[0]), decode(hit[1])
    try:  # this caller computes: the first, or one whose wait found nothing (the other one failed)
        usage, invoice = compute()
        texts = (encode(usage), encode(invoice))
        with _lock:
            _remember(_cache, key, texts)
        return decode(texts[0]), decode(texts[1])
    finally:
        if mine is not None:
            with _lock:
                _computing.pop(key, None)
            mine.set()


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
