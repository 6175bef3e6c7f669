"""The bill cache: one computation for callers asking at once, supersession, bounds fair across providers."""

import threading
import time
from typing import Any

import pytest

from collector import billcache


@pytest.fixture(autouse=True)
def _empty() -> Any:
    billcache.clear()
    yield
    billcache.clear()


def test_callers_asking_at_once_share_one_computation() -> None:
    started, release, calls = threading.Event(), threading.Event(), []

    def compute() -> tuple[Any, Any]:
        calls.append(1)
        started.set()
        release.wait(5)
        return {"rows": [1]}, {"total": "1.00"}

    got: list[Any] = []
    first = threading.Thread(target=lambda: got.append(billcache.bill(("db", "acme", "2026-10", 5), compute)))
    first.start()
    started.wait(5)
    key = ("db", "acme", "2026-10", 5)
    waiters = [threading.Thread(target=lambda: got.append(billcache.bill(key, compute))) for _ in range(3)]
    for w in waiters:
        w.start()
    time.sleep(0.2)  # the waiters reach the cache while the first computation is still running
    release.set()
    for t in (first, *waiters):
        t.join(5)
    assert len(calls) == 1 and got == [({"rows": [1]}, {"total": "1.00"})] * 4
    got[0][0]["rows"].append(2)  # each caller has its own copy
    assert billcache.bill(("db", "acme", "2026-10", 5), compute)[0] == {"rows": [1]}


def test_a_failed_computation_is_not_remembered_and_a_waiter_sees_the_error_itself() -> None:
    started, release = threading.Event(), threading.Event()

    def failing() -> tuple[Any, Any]:
        started.set()
        release.wait(5)
        raise ValueError("no rate prices pro")

    errors: list[str] = []

    def ask() -> None:
        try:
            billcache.bill(("db", "acme", "2026-10", 5), failing)
        except ValueError as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=ask)]
    threads[0].start()
    started.wait(5)
    threads.append(threading.Thread(target=ask))
    threads[1].start()
    time.sleep(0.2)
    release.set()
    for t in threads:
        t.join(5)
    assert errors == ["no rate prices pro"] * 2 and not billcache._cache


def test_a_newer_state_of_a_month_supersedes_the_older() -> None:
    for size in (5, 6, 7):
        billcache.bill(("db", "acme", "2026-10", size), lambda s=size: ({"size": s}, {}))
    assert list(billcache._cache) == [("db", "acme", "2026-10", 7)]


def test_one_provider_asking_for_many_months_pushes_out_its_own_bills_only(monkeypatch: Any) -> None:
    monkeypatch.setattr(billcache, "SIZE", 20)
    billcache.bill(("db", "beta", "2026-10", 1), lambda: ({"beta": 1}, {}))
    for m in range(1, 13):
        for year in (2024, 2025):
            billcache.bill(("db", "acme", f"{year}-{m:02d}", 1), lambda: ({}, {}))
    kept = [k for k in billcache._cache if k[1] == "acme"]
    assert len(kept) == billcache.PER_PROVIDER and kept[-1][2] == "2025-12"  # the latest months
    assert ("db", "beta", "2026-10", 1) in billcache._cache


def test_bills_are_held_to_a_size_in_bytes_the_oldest_going_first(monkeypatch: Any) -> None:
    big = {"x": "y" * 1000}
    monkeypatch.setattr(billcache, "BYTES", 5500)  # five bills of ~1 kB
    for i in range(8):
        billcache.bill(("db", f"p{i}", "2026-10", 1), lambda: (big, {}))
    assert [k[1] for k in billcache._cache] == ["p3", "p4", "p5", "p6", "p7"]


def test_pages_results_of_one_tenants_many_months_push_out_its_own_only(tmp_path: Any) -> None:
    """The pages' result cache (collector/resultcache.py) under a tenant asking for 80 months."""
    from collector import resultcache
    from tests._seed import opened

    computed: list[tuple[str, str]] = []
    with opened(tmp_path) as st, st.engine.connect() as c:
        def ask(provider: str, month: str) -> Any:
            return resultcache.cached(c, ("results", resultcache.db_id(c), provider, month), (),
                                      lambda _c: computed.append((provider, month)) or month)

        resultcache._cache.clear()
        ask("beta", "2026-10")
        for i in range(80):
            ask("acme", f"{2020 + i // 12}-{i % 12 + 1:02d}")
        ask("beta", "2026-10")
        assert computed.count(("beta", "2026-10")) == 1  # beta's bill survived acme's 80 months
        kinds = [k for k in resultcache._cache if k[0] == "results" and k[2] == "acme"]
        assert len(kinds) == resultcache.PER_PROVIDER
        resultcache._cache.clear()
