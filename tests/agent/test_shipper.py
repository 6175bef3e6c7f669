"""Shipping: durable answers only, Retry-After honoured, rejected heartbeats set aside, not resent."""

import gzip
import json
import subprocess
import time
from pathlib import Path

import httpx
from conftest import AGENT, agent_env, enrolled_agent, run_cli, spool_rows

from agent.config import AgentSettings
from agent.shipper import Shipper, retry_after
from agent.spool import Spool
from protocol.heartbeat import parse_unverified
from protocol.keys import load_private_key

POLLS = [{"adapter": "lab", "platform": "kvm", "ok": True, "error": None}]


def _spool_with(tmp_path: Path, collector, n: int) -> tuple[Spool, AgentSettings]:
    cfg = enrolled_agent(tmp_path, collector, interval=60, allow_short_interval=False)
    state = tmp_path / "state-a"
    key = load_private_key(state / "agent.key")
    spool = Spool(state / "spool.db")
    now = int(time.time()) + 1
    for i in range(n):
        spool.append(key, now + i, 60, POLLS, [])
    settings = AgentSettings(collector=collector.url, state_dir=state, interval=60)
    assert cfg.exists()
    return spool, settings


def test_retry_after_is_honoured_and_nothing_deleted(tmp_path: Path, make_collector) -> None:
    collector = make_collector(extra=["--fail-first", "2", "--retry-after", "7"])
    spool, settings = _spool_with(tmp_path, collector, 3)
    shipper = Shipper(settings, spool)
    assert shipper.ship_once() == 7.0
    assert shipper.ship_once() == 7.0
    assert spool.stats()["spool_depth"] == 3
    assert shipper.ship_once() == 0.0
    assert spool.stats()["spool_depth"] == 0 and shipper.ship_once() is None
    assert collector.query("SELECT seq FROM heartbeats ORDER BY seq") == [(1,), (2,), (3,)]


def test_retry_after_never_shortens_the_backoff(tmp_path: Path, make_collector) -> None:
    # "Retry-After: 0" (or a date already past, our clock being ahead) resent at once, in a loop
    collector = make_collector(extra=["--fail-first", "3", "--retry-after", "0"])
    spool, settings = _spool_with(tmp_path, collector, 2)
    shipper = Shipper(settings, spool)
    delays = [shipper.ship_once() for _ in range(3)]
    assert all(d is not None and d >= shipper.base / 2 for d in delays), delays
    assert shipper.failures == 3 and spool.stats()["spool_depth"] == 2
    assert shipper.ship_once() == 0.0 and spool.stats()["spool_depth"] == 0


def test_a_413_halves_the_batch_until_it_passes(tmp_path: Path, make_collector) -> None:
    # A proxy in front of the collector may take fewer lines than the collector's 5,000
    collector = make_collector(extra=["--max-lines", "3"])
    spool, settings = _spool_with(tmp_path, collector, 13)
    shipper = Shipper(settings, spool)
    while (delay := shipper.ship_once()) is not None:
        assert delay == 0.0  # split and resent at once, not backed off
    assert shipper.batch_lines == 3 and spool.stats()["spool_depth"] == 0
    assert collector.query("SELECT seq FROM heartbeats ORDER BY seq") == [(i,) for i in range(1, 14)]


def test_retry_after_http_date() -> None:
    assert retry_after("120") == 120.0
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412480 - 30) == 30.0
    assert retry_after("soon") is None and retry_after(None) is None


def test_broken_connection_keeps_everything(tmp_path: Path, make_collector) -> None:
    collector = make_collector()
    spool, settings = _spool_with(tmp_path, collector, 2)
    collector.kill()
    shipper = Shipper(settings, spool)
    delay = shipper.ship_once()
    assert delay is not None and delay > 0
    assert spool.stats()["spool_depth"] == 2


def test_mismatched_answer_deletes_nothing(tmp_path: Path, make_collector) -> None:
    collector = make_collector()
    spool, settings = _spool_with(tmp_path, collector, 2)
    transport = httpx.MockTransport(lambda req: httpx.Response(200, json={"results": [
        {"seq": 1, "status": "accepted"}]}))
    shipper = Shipper(settings, spool, client=httpx.Client(transport=transport))
    delay = shipper.ship_once()
    assert delay is not None and delay > 0
    assert spool.stats()["spool_depth"] == 2


def test_rejected_set_aside_not_resent_and_shown(tmp_path: Path, make_collector) -> None:
    collector = make_collector(extra=["--reject-seq", "2"])
    cfg = enrolled_agent(tmp_path, collector)
    proc = subprocess.Popen([str(AGENT), "run", "--config", str(cfg)], env=agent_env(),
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if collector.query("SELECT count(*) FROM heartbeats")[0][0] >= 5:
                break
            time.sleep(0.2)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "event=heartbeat_rejected seq=2" in err
    # The rejected line reached the collector exactly once: never resent in a loop.
    assert collector.query("SELECT count(*) FROM received WHERE status = 'rejected'") == [(1,)]
    state = tmp_path / "state-a"
    assert spool_rows(state, "SELECT seq FROM rejected") == [(2,)]
    status = json.loads(run_cli("status", "--config", str(cfg), "--json").stdout)
    assert status["rejected"]["count"] == 1
    assert "test.reject" in next(iter(status["rejected"]["reasons"]))
    accepted = [s for (s,) in collector.query("SELECT seq FROM heartbeats ORDER BY seq")]
    assert 2 not in accepted and accepted[:2] == [1, 3]


def test_the_spool_gauges_follow_the_shipping(tmp_path: Path, make_collector) -> None:
    """After an outage the depth gauge showed the old depth until the next poll (5 min at the
    default interval) while `status` said 0: shipping sets it too."""
    from agent.metrics import Metrics

    collector = make_collector(extra=["--fail-first", "1", "--retry-after", "1"])
    spool, settings = _spool_with(tmp_path, collector, 3)
    metrics = Metrics()
    metrics.depth.set(3)  # as the last poll left it
    shipper = Shipper(settings, spool, metrics)
    shipper.ship_once()  # refused: nothing changes
    assert metrics.depth._value.get() == 3
    assert shipper.ship_once() == 0.0
    assert metrics.depth._value.get() == 0 and metrics.oldest._value.get() == 0


def test_a_clock_ahead_of_the_collectors_signs_nothing(tmp_path: Path, make_collector) -> None:
    """A boot before NTP had synced, the clock hours ahead: one heartbeat signed then is rejected as
    time.future and moves the chain's head ahead, so every slot until that time was skipped.
    The collector's Date (its /healthz before the first poll) says so before anything is signed."""
    behind = make_collector(extra=["--clock-offset", "-3600"])  # the collector an hour behind us
    cfg = enrolled_agent(tmp_path, behind, interval=1)
    proc = subprocess.Popen([str(AGENT), "run", "--config", str(cfg)], stderr=subprocess.PIPE, text=True,
                            env=agent_env())
    seen = ""
    try:
        while seen.count("event=clock_ahead") < 2:
            line = proc.stderr.readline()
            assert line, seen
            seen += line
    finally:
        proc.terminate()
        seen += proc.communicate(timeout=60)[1]
    assert "ahead_s=3600" in seen or "ahead_s=3599" in seen or "ahead_s=3601" in seen, seen
    assert "event=heartbeat " not in seen and "event=heartbeat_rejected" not in seen
    status = json.loads(run_cli("status", "--config", str(cfg), "--json").stdout)
    assert status["last_seq"] == 0 and any(e["kind"] == "clock_ahead" for e in status["clock_events"])
    text = run_cli("status", "--config", str(cfg)).stdout  # the count and the latest, not 20 on one line
    line = next(ln for ln in text.splitlines() if ln.startswith("clock_events"))
    assert f"{len(status['clock_events'])} recorded (--json lists them); latest: " in line
    assert line.count("kind") == 1


def test_the_collectors_clock_is_carried_forward_and_a_fixed_clock_counts_at_once(monkeypatch) -> None:
    import email.utils

    from agent.collectorclock import CollectorClock

    clock = CollectorClock()
    assert clock.ahead() is None  # no answer yet: nothing to agree with
    real = time.time()
    clock.saw(email.utils.formatdate(real - 7200, usegmt=True))
    assert 7199 <= clock.ahead() <= 7201
    monkeypatch.setattr(time, "time", lambda: real - 7200)  # NTP stepped our clock back
    assert abs(clock.ahead()) <= 1
    clock.saw("not a date")  # ignored
    assert abs(clock.ahead()) <= 1


def test_a_408_halves_the_batch_as_a_413_does(tmp_path: Path, make_collector) -> None:
    # Diff review: the collector cuts a body that arrives too slowly (408, collector/requestguard.py);
    # on a slow link the same 5,000-line batch was resent and cut at the same place for good
    collector = make_collector()
    spool, settings = _spool_with(tmp_path, collector, 5)
    sizes: list[int] = []

    def slow_link(req: httpx.Request) -> httpx.Response:
        body = req.content
        if req.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        lines = body.decode().splitlines()
        sizes.append(len(lines))
        if len(lines) > 2:
            return httpx.Response(408, json={"detail": "the request body stalled"})
        return httpx.Response(200, json={"results": [
            {"seq": parse_unverified(t).seq, "status": "accepted"} for t in lines]})

    shipper = Shipper(settings, spool, client=httpx.Client(transport=httpx.MockTransport(slow_link)))
    while shipper.ship_once() == 0.0 and spool.stats()["spool_depth"]:
        pass
    assert spool.stats()["spool_depth"] == 0 and sizes[:2] == [5, 2]
