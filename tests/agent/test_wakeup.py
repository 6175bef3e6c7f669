"""The main loop's wake-up: set by threads and signal handlers without a lock, used up by a wait."""

import os
import select
import signal
import threading
import time

from agent import wakeup as wakeup_mod
from agent.wakeup import Wakeup


def _woken(wakeup: Wakeup) -> None:
    """wait(30) returned long before its timeout: something woke it."""
    start = time.monotonic()
    wakeup.wait(30)
    assert time.monotonic() - start < 10


def test_set_wakes_a_wait_once() -> None:
    wakeup = Wakeup()
    try:
        wakeup.set()
        wakeup.set()
        _woken(wakeup)
        start = time.monotonic()
        wakeup.wait(0.2)  # both wake-ups were used up by the first wait
        assert time.monotonic() - start >= 0.19
    finally:
        wakeup.close()


def test_a_thread_wakes_a_waiting_main_loop() -> None:
    wakeup = Wakeup()
    try:
        threading.Timer(0.1, wakeup.set).start()
        _woken(wakeup)
    finally:
        wakeup.close()


def test_a_signal_wakes_the_wait_though_its_handler_only_sets_a_flag() -> None:
    wakeup = Wakeup()
    seen: list[int] = []
    old = signal.signal(signal.SIGUSR1, lambda signum, _: seen.append(signum))
    try:
        wakeup.catch_signals()
        threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGUSR1)).start()
        _woken(wakeup)
        assert seen == [signal.SIGUSR1]
    finally:
        wakeup.close()
        signal.signal(signal.SIGUSR1, old)
    assert signal.set_wakeup_fd(-1) == -1  # close() gave the wake-up fd back


def test_set_after_close_is_harmless() -> None:
    wakeup = Wakeup()
    wakeup.close()
    wakeup.set()  # a signal during shutdown must not raise in its handler


def test_a_handler_that_runs_inside_the_wait_itself_does_not_hang(monkeypatch) -> None:
    """The hang this replaces: a SIGTERM handler calling Event.set() ran while the main thread held
    that event's lock inside Event.wait(). Here the handler runs at the worst place we can pick,
    inside wait(), and its set() must wake the wait rather than wait for it."""
    wakeup = Wakeup()
    real = select.select
    seen: list[int] = []

    def handler(signum: int, _: object) -> None:
        seen.append(signum)
        wakeup.set()

    def interrupted(*args: object) -> object:
        os.kill(os.getpid(), signal.SIGUSR1)  # the handler runs here, on this (the main) thread
        return real(*args)

    old = signal.signal(signal.SIGUSR1, handler)
    monkeypatch.setattr(wakeup_mod.select, "select", interrupted)
    try:
        _woken(wakeup)
        assert seen == [signal.SIGUSR1]
    finally:
        monkeypatch.undo()
        wakeup.close()
        signal.signal(signal.SIGUSR1, old)
