"""Poller.close while a poll is being asked for: the adapters are never closed under a poll."""

import threading
import time
from concurrent.futures import Future
from typing import Any

from adapters.registry import adapter_class
from agent.poller import Poller


def test_a_reload_between_a_submit_and_its_store_waits_for_the_poll(fake_registry: None) -> None:
    """A review: close(linger=True) (a reload, on the main thread) coming after poll_all's submit had
    returned but before its future was stored saw no poll running and closed the adapter under it:
    the slot was signed with that adapter failed ("closed during the poll")."""
    cfg = adapter_class("kvm").Config(name="l", platform="kvm", delay=1.0, timeout=10)
    poller = Poller([cfg])
    submit = poller.pool.submit
    closer: list[threading.Thread] = []

    def submitted(*a: Any, **k: Any) -> Future[Any]:
        fut = submit(*a, **k)
        end = time.monotonic() + 5
        while not poller.adapters["l"].__dict__.get("polling") and time.monotonic() < end:
            time.sleep(0.01)
        closer.append(threading.Thread(target=poller.close, kwargs={"linger": True}))
        closer[0].start()
        closer[0].join(0.3)  # as far as it gets before the future is stored
        return fut

    poller.pool.submit = submitted  # type: ignore[method-assign]
    outcome = poller.poll_all()
    assert outcome.polls == [{"adapter": "l", "platform": "kvm", "ok": True, "error": None}]
    closer[0].join(5)
    poller.closed(5)
    assert poller.adapters["l"].__dict__.get("closed")  # closed once the poll ended


def test_a_reload_lets_queued_polls_run(fake_registry: None) -> None:
    """A review: a reload cancelled the polls still queued in the old pool (more adapters than its
    threads), and the slot was signed with "internal error: CancelledError" for them."""
    cfgs = [adapter_class("kvm").Config(name=f"q{i}", platform="kvm", delay=0.3, timeout=10)
            for i in range(5)]
    poller = Poller(cfgs)
    poller.pool._max_workers = 1  # one thread: the others wait in the queue
    result: list[Any] = []
    polling = threading.Thread(target=lambda: result.append(poller.poll_all()))
    polling.start()
    end = time.monotonic() + 5
    while not any(a.__dict__.get("polling") for a in poller.adapters.values()) and time.monotonic() < end:
        time.sleep(0.01)
    poller.close(linger=True)
    polling.join(20)
    assert [p["ok"] for p in result[0].polls] == [True] * 5, result[0].polls
    poller.closed(10)


def test_a_stop_closes_the_adapters_at_once_within_its_budget(fake_registry: None, caplog: Any) -> None:
    """A review: the adapters were closed one after another, each vSphere logout that dripped taking
    up to 0.9 x its timeout, and a stop ran past systemd's TimeoutStopSec. All at once now, within
    the budget the stop gives them."""
    cfgs = [adapter_class("kvm").Config(name=f"c{i}", platform="kvm", close_delay=1.0, timeout=10)
            for i in range(4)]
    poller = Poller(cfgs)
    started = time.monotonic()
    poller.close(budget=5)
    assert time.monotonic() - started < 3  # 4 closes of 1 s each: at once, not 4 s in turn
    assert all(a.__dict__.get("closed") for a in poller.adapters.values())
    slow = Poller([adapter_class("kvm").Config(name="s", platform="kvm", close_delay=30, timeout=60)])
    started = time.monotonic()
    slow.close(budget=0.5)
    assert time.monotonic() - started < 3  # the budget, not the close's 30 s
    assert "adapter=s event=close_unfinished budget=0.5" in caplog.text
