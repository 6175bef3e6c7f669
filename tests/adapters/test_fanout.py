"""fanout.within: a set-up step against a frozen endpoint holds one daemon thread, whatever the polls."""

import threading
import time

import pytest

from adapters.base import UnreachableError
from adapters.fanout import within


def _threads(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == name and t.is_alive()]


def test_a_frozen_step_holds_one_daemon_thread_across_polls() -> None:
    lock, frozen = threading.Lock(), threading.Event()
    try:
        for _ in range(5):
            with pytest.raises(UnreachableError, match="signing in: no answer within the poll timeout"):
                within(time.monotonic() + 0.05, frozen.wait, what="signing in", lock=lock,
                       thread_name="t-frozen")
        held = _threads("t-frozen")
        assert len(held) == 1 and held[0].daemon  # not joined at exit, not one more a poll
    finally:
        frozen.set()
    held[0].join(5)
    again = within(time.monotonic() + 5, lambda: "ok", what="signing in", lock=lock, thread_name="t-frozen")
    assert again == "ok"


def test_errors_are_raised_in_the_polls_thread_and_steps_of_one_poll_follow_each_other() -> None:
    lock = threading.Lock()

    def refused() -> str:
        raise UnreachableError("HTTP 401")

    with pytest.raises(UnreachableError, match="HTTP 401"):
        within(time.monotonic() + 5, refused, what="login", lock=lock, thread_name="t-err")
    # two steps in a row with one lock (Proxmox: login, then the resources): the second never
    # sees the first still holding it
    for _ in range(200):
        assert within(time.monotonic() + 5, lambda: 1, what="a", lock=lock, thread_name="t-seq") == 1
