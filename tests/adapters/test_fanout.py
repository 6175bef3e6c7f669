"""fanout.within: a set-up step against a frozen endpoint holds one daemon thread, whatever the polls."""

import threading
import time
from typing import Any

import pytest

from adapters.base import AdapterError, Observation, UnreachableError
from adapters.fanout import Behind, SetupLock, Turns, poll_scopes, within


def _threads(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == name and t.is_alive()]


def test_a_frozen_step_holds_one_daemon_thread_across_polls() -> None:
    lock, frozen = SetupLock(), threading.Event()
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



def test_what_a_late_step_returns_goes_to_abandoned_and_an_answer_on_time_never_does() -> None:
    """A session opened after its poll gave up is handed to ``abandoned`` (to log it out), once, under
    the lock; one that answered in time is the poll's, and never ended behind its back."""
    lock, release, ended = SetupLock(), threading.Event(), []

    def late() -> str:
        release.wait(5)
        return "session-1"

    with pytest.raises(UnreachableError, match="login: no answer within the poll timeout"):
        within(time.monotonic() + 0.05, late, what="login", lock=lock, thread_name="t-late",
               abandoned=ended.append)
    release.set()
    for t in _threads("t-late"):
        t.join(5)
    assert ended == ["session-1"] and not lock.locked()
    # At the edge of the deadline: each result is the poll's or abandoned, never both, never neither.
    mine = 0
    for i in range(200):
        try:
            got = within(time.monotonic() + (0.0005 * (i % 8) if i % 2 else 5), lambda: "s", what="login",
                         lock=lock, thread_name="t-edge", abandoned=ended.append)
        except UnreachableError:
            pass
        else:
            assert got == "s"
            mine += 1
        for t in _threads("t-edge"):
            t.join(5)
        assert mine + len(ended) - 1 == i + 1
    assert mine >= 100  # those with 5 s to answer


def test_errors_are_raised_in_the_polls_thread_and_steps_of_one_poll_follow_each_other() -> None:
    lock = SetupLock()

    def refused() -> str:
        raise UnreachableError("HTTP 401")

    with pytest.raises(UnreachableError, match="HTTP 401"):
        within(time.monotonic() + 5, refused, what="login", lock=lock, thread_name="t-err")
    # two steps in a row with one lock (Proxmox: login, then the resources): the second never
    # sees the first still holding it
    for _ in range(200):
        assert within(time.monotonic() + 5, lambda: 1, what="a", lock=lock, thread_name="t-seq") == 1


def test_every_scope_gets_its_turn_when_a_poll_cannot_ask_them_all() -> None:
    """Scopes asked in a fixed order left the same ones unasked at every poll (24 of 40 Azure
    subscriptions never metered, each blamed on ARM). Found by a review."""
    scopes = [f"s{i:02d}" for i in range(12)]
    turns, seen, asked = Turns(), set(), []

    def poll_one(scope: str) -> list[Observation]:
        asked.append(scope)
        time.sleep(0.2)
        return [Observation(scope, f"vm-{scope}", None, "running", None)]

    for _ in range(12):
        time.sleep(0.3)  # the last poll's late threads end first: they append to ``asked`` too
        asked.clear()
        result = poll_scopes(scopes, poll_one, label="subscription", deadline=time.monotonic() + 0.5,
                             workers=2, thread_name="t-turns", convert=AdapterError,
                             late=lambda s: UnreachableError("no answer within the poll timeout"),
                             turns=turns)
        first_asked = asked[:2]
        seen |= {o.instance for o in result.observations}
        unasked = [s for s in scopes if s not in asked]
        # (a scope whose thread started but had not yet recorded it counts as asked and late)
        assert set(turns.unasked) <= set(unasked)
        for s in turns.unasked:  # named as not asked, not blamed on the endpoint
            assert f"subscription {s}: not asked: the poll timeout came before its turn" in str(result.error)
        if seen == set(scopes):
            break
        assert first_asked  # something was asked at every poll
    assert seen == set(scopes)


def test_a_step_still_waiting_is_named_by_the_next_poll() -> None:
    """A hung cluster/resources read as "login" at the next poll (Proxmox with a token logs in
    nowhere). Found by a review."""
    lock, frozen, entered = SetupLock(), threading.Event(), threading.Event()
    assert within(time.monotonic() + 5, lambda: "api", what="login", lock=lock, thread_name="t-st") == "api"

    def hang() -> None:
        entered.set()
        frozen.wait()

    try:
        hung = r"^cluster/resources: no answer within the poll timeout"
        with pytest.raises(UnreachableError, match=hung + "$"):
            within(time.monotonic() + 0.05, hang, what="cluster/resources", lock=lock, thread_name="t-st")
        assert entered.wait(30)  # it holds the lock now, however slow the machine
        with pytest.raises(UnreachableError, match=hung + r" \(the previous poll's attempt is still"):
            within(time.monotonic() + 0.05, lambda: "api", what="login", lock=lock, thread_name="t-st")
    finally:
        frozen.set()


def test_a_scope_still_answering_an_earlier_poll_is_not_asked_again_beside_it() -> None:
    """A region dripping its answer forever added a thread at every poll (each call given up on kept
    its thread until the SDK's timeouts). Now one thread a scope; the others are asked as usual."""
    turns, frozen = Turns(), threading.Event()
    calls: list[str] = []

    def poll_one(scope: str) -> list[Observation]:
        calls.append(scope)
        if scope == "eu-south-9":
            frozen.wait(30)
        return [Observation(f"fw-{scope}", f"vm-{scope}", None, "running", None)]

    def poll() -> Any:
        return poll_scopes(["eu-west-1", "eu-south-9"], poll_one, label="region",
                           deadline=time.monotonic() + 0.3, workers=4, thread_name="t-held",
                           convert=AdapterError, late=lambda s: UnreachableError("EC2 gave no answer"),
                           turns=turns)

    try:
        first = poll()
        assert first.error == "region eu-south-9: EC2 gave no answer"
        for _ in range(4):
            later = poll()
            assert [o.instance for o in later.observations] == ["fw-eu-west-1"]
            assert later.error == ("region eu-south-9: EC2 gave no answer (the previous poll's request is "
                                   "still waiting: not asked again)")
        assert calls.count("eu-south-9") == 1 and calls.count("eu-west-1") == 5
        for _ in range(100):  # the last pool's idle thread is ending; the frozen call's stays
            held = [t for t in threading.enumerate() if t.name.startswith("t-held") and t.is_alive()]
            if len(held) == 1:
                break
            time.sleep(0.02)
        assert len(held) == 1
    finally:
        frozen.set()
    for _ in range(100):  # the late call ends: the scope is asked again
        if not poll().error:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the scope was not asked again once its call ended")
    assert calls.count("eu-south-9") == 2


def test_best_effort_calls_left_behind_are_bounded_and_none_is_lost(caplog: pytest.LogCaptureFixture) -> None:
    """Behind: a logout or a shell deletion against a server that drips its answer ran a thread at
    every poll; at most ``limit`` threads now, and the calls made meanwhile wait their turn (a review:
    skipped, each poll's WinRM shell stayed on the host until the shell quota was reached)."""
    behind, frozen, done = Behind("hv1", limit=2, queue=3), threading.Event(), []
    try:
        for i in range(6):
            assert behind.run(time.monotonic() + 0.05, lambda i=i: (frozen.wait(30), done.append(i)),
                              what="WinRM shell deletion", thread_name="t-behind") is False
        assert len(_threads("t-behind")) == 2 and behind.running == 5  # 2 running, 3 waiting, 1 dropped
        said = caplog.text
        assert "adapter hv1: WinRM shell deletion waits its turn: 2 earlier ones are still waiting" in said
        assert "adapter hv1: WinRM shell deletion dropped: 3 calls wait for the server already" in said
    finally:
        frozen.set()
    for t in _threads("t-behind"):
        t.join(5)
    assert sorted(done) == [0, 1, 3, 4, 5] and behind.running == 0  # the oldest waiting one, 2, dropped
    assert behind.run(time.monotonic() + 5, lambda: done.append(6), what="logout", thread_name="t-behind")

    def refused() -> None:
        raise OSError("connection reset")

    assert behind.run(time.monotonic() + 5, refused, what="logout", thread_name="t-behind")  # ended, quietly
    assert done[-1] == 6 and behind.running == 0


def test_a_close_waits_its_turn_behind_stuck_calls_and_a_poll_does_not() -> None:
    """A review: with both threads taken by late calls, close()'s logout was queued and not waited
    for, so a stop ended before it was sent. A poll's best-effort call still does not wait."""
    behind, release, done = Behind("vc1", limit=2), threading.Event(), []
    for _ in range(2):
        behind.start(lambda: release.wait(30), what="DestroyView", thread_name="t-turn")
    threading.Timer(0.5, release.set).start()
    started = time.monotonic()
    assert behind.run(time.monotonic() + 0.1, lambda: done.append("delete"), what="WinRM shell deletion",
                      thread_name="t-turn") is False
    assert time.monotonic() - started < 0.1  # queued: not waited for
    assert behind.run(time.monotonic() + 10, lambda: done.append("logout"), what="logout",
                      thread_name="t-turn", wait_turn=True) is True
    assert done[-1] == "logout" and time.monotonic() - started >= 0.4
