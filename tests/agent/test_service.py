"""The service: sd_notify readiness and watchdog, SIGTERM, SIGHUP reload, clock going backwards."""

import email.utils
import json
import signal
import socket
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from conftest import AGENT, agent_env, enrolled_agent, run_cli, write_config

from agent import polljob, startup
from agent.poller import Poller
from agent.service import Service
from agent.slotevents import back_limit
from agent.spool import Spool
from agent.startup import aligned_start
from protocol.chain import analyze
from protocol.heartbeat import ZERO_HASH, parse_unverified, token_digest
from protocol.keys import AgentKey, save_private_key


def _wait(pred, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@pytest.mark.parametrize("abstract", [False, True])
def test_sd_notify_ready_watchdog_stopping(tmp_path: Path, abstract: bool) -> None:
    state = tmp_path / "s"
    state.mkdir()
    save_private_key(AgentKey.generate(), state / "agent.key")
    cfg = write_config(tmp_path / "a.toml", {"state_dir": str(state), "interval": 1,
                                             "allow_short_interval": True},
                       [{"name": "l", "platform": "kvm"}])  # `run` refuses a file that polls nothing
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        name = f"tr7-agent-test-{time.monotonic_ns()}"
        sock.bind("\0" + name)
        addr = "@" + name
    else:
        addr = str(tmp_path / "notify.sock")
        sock.bind(addr)
    sock.settimeout(30)
    proc = subprocess.Popen([str(AGENT), "run", "--config", str(cfg)], stderr=subprocess.PIPE, text=True,
                            env=agent_env(NOTIFY_SOCKET=addr, WATCHDOG_USEC="400000"))
    got: list[str] = []
    try:
        while "WATCHDOG=1" not in got:
            got += sock.recv(4096).decode().split("\n")
        assert got[0] == "READY=1"
        proc.send_signal(signal.SIGTERM)
        while "STOPPING=1" not in got:
            got += sock.recv(4096).decode().split("\n")
        assert proc.wait(30) == 0
    finally:
        proc.kill()
        sock.close()


def test_sd_notify_status_follows_a_reload(tmp_path: Path) -> None:
    """After a reload to another interval the service manager's STATUS= says the new one."""
    state = tmp_path / "s"
    state.mkdir()
    save_private_key(AgentKey.generate(), state / "agent.key")
    agent = {"state_dir": str(state), "interval": 1, "allow_short_interval": True}
    adapters = [{"name": "l", "platform": "kvm"}]  # `run` refuses a file that polls nothing
    cfg = write_config(tmp_path / "a.toml", agent, adapters)
    addr = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(addr)
    sock.settimeout(30)
    proc = subprocess.Popen([str(AGENT), "run", "--config", str(cfg)], stderr=subprocess.PIPE, text=True,
                            env=agent_env(NOTIFY_SOCKET=addr))
    try:
        assert sock.recv(4096).decode() == "READY=1\nSTATUS=polling every 1s"
        write_config(cfg, {**agent, "interval": 2}, adapters)
        proc.send_signal(signal.SIGHUP)
        got = [sock.recv(4096).decode() for _ in range(2)]
        assert got == ["RELOADING=1", "READY=1\nSTATUS=polling every 2s"]
    finally:
        proc.terminate()
        proc.communicate(timeout=60)
        sock.close()


def test_sigterm_finishes_poll_in_flight(tmp_path: Path) -> None:
    state = tmp_path / "s"
    state.mkdir()
    save_private_key(AgentKey.generate(), state / "agent.key")
    cfg = write_config(tmp_path / "a.toml", {"state_dir": str(state), "interval": 2,
                                             "allow_short_interval": True},
                       [{"name": "slow", "platform": "kvm", "delay": 1.5, "timeout": 1.9}])
    proc = subprocess.Popen([str(AGENT), "run", "--config", str(cfg)], stderr=subprocess.PIPE, text=True,
                            env=agent_env())
    seen = ""
    while "event=heartbeat seq=1" not in seen:  # the first poll's end, 1.5 s into its 2 s slot
        line = proc.stderr.readline()
        assert line, seen
        seen += line
    time.sleep(1.0)  # the next poll has started and sleeps inside the adapter
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    err = seen + err
    assert proc.returncode == 0, err
    assert "event=heartbeat seq=2" in err and "failed=0" in err  # the poll in flight signed and committed
    spool = Spool(state / "spool.db")
    assert len(list(spool.unshipped())) == err.count("event=heartbeat ")


def test_sigterm_ends_the_agent_while_an_adapter_hangs_in_its_sdk(tmp_path: Path) -> None:
    """A frozen endpoint (libvirtd that accepts and never answers): the poll fails by its timeout,
    and a stop ends the process; the SDK call's thread kept it alive until systemd's SIGKILL."""
    state = tmp_path / "s"
    state.mkdir()
    save_private_key(AgentKey.generate(), state / "agent.key")
    cfg = write_config(tmp_path / "a.toml", {"state_dir": str(state), "interval": 2,
                                             "allow_short_interval": True},
                       [{"name": "hung", "platform": "kvm", "hang": True, "timeout": 1},
                        {"name": "lab", "platform": "kvm", "instances": 1}])
    proc = subprocess.Popen([str(AGENT), "run", "--config", str(cfg)], stderr=subprocess.PIPE, text=True,
                            env=agent_env())
    seen = ""
    try:
        while seen.count("event=poll_failed") < 3:  # the first attempt, then "still waiting"
            line = proc.stderr.readline()
            assert line, seen
            seen += line
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, seen + err
    assert "signing in: no answer within the poll timeout" in seen and "event=stopped" in err
    assert "observations=1 failed=1" in seen  # the other adapter's instance was observed all along


def test_sighup_reload_keeps_key_and_chain(tmp_path: Path, make_collector) -> None:
    collector = make_collector()
    cfg = enrolled_agent(tmp_path, collector)
    proc = subprocess.Popen([str(AGENT), "run", "--config", str(cfg)], stderr=subprocess.PIPE, text=True,
                            env=agent_env())
    count = lambda: collector.query("SELECT count(*) FROM heartbeats")[0][0]  # noqa: E731
    try:
        _wait(lambda: count() >= 3)
        text = cfg.read_text().replace('name = "lab"', 'name = "lab2"').replace("instances = 3",
                                                                                 "instances = 5")
        cfg.write_text(text)
        proc.send_signal(signal.SIGHUP)
        _wait(lambda: any("lab2" in json.dumps(parse_unverified(t).polls)
                          for (t,) in collector.query("SELECT token FROM heartbeats")))
        n = count()
        _wait(lambda: count() >= n + 2)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "event=reloaded" in err
    rows = collector.query("SELECT kid, token FROM heartbeats ORDER BY seq")
    assert len({kid for kid, _ in rows}) == 1
    prev = ZERO_HASH
    for i, (_, tok) in enumerate(rows, 1):
        hb = parse_unverified(tok)
        assert (hb.seq, hb.prev) == (i, prev)
        prev = token_digest(tok)
    names = [parse_unverified(t).polls[0]["adapter"] for _, t in rows]
    assert names[0] == "lab" and names[-1] == "lab2"
    assert len(parse_unverified(rows[-1][1]).observations) == 5


def test_bad_config_on_sighup_keeps_running(tmp_path: Path) -> None:
    state = tmp_path / "s"
    state.mkdir()
    save_private_key(AgentKey.generate(), state / "agent.key")
    cfg = write_config(tmp_path / "a.toml", {"state_dir": str(state), "interval": 1,
                                             "allow_short_interval": True},
                       [{"name": "l", "platform": "kvm"}])
    proc = subprocess.Popen([str(AGENT), "run", "--config", str(cfg)], stderr=subprocess.PIPE, text=True,
                            env=agent_env())
    try:
        _wait(lambda: (state / "spool.db").exists())
        cfg.write_text(cfg.read_text() + "bogus = 1\n")
        proc.send_signal(signal.SIGHUP)
        time.sleep(2.5)
        assert proc.poll() is None
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "event=reload_failed" in err and "bogus" in err and proc.returncode == 0


def test_a_reload_naming_a_missing_ca_file_is_refused_not_fatal(tmp_path: Path, make_collector) -> None:
    collector = make_collector()
    state = tmp_path / "s"
    state.mkdir()
    save_private_key(AgentKey.generate(), state / "agent.key")
    agent = {"state_dir": str(state), "interval": 1, "allow_short_interval": True, "collector": collector.url}
    cfg = write_config(tmp_path / "a.toml", agent, [{"name": "l", "platform": "kvm"}])
    proc = subprocess.Popen([str(AGENT), "run", "--config", str(cfg)], stderr=subprocess.PIPE, text=True,
                            env=agent_env())
    try:
        _wait(lambda: (state / "spool.db").exists())
        adapters = [{"name": "l", "platform": "kvm"}]
        write_config(cfg, {**agent, "ca_file": str(tmp_path / "gone.pem")}, adapters)
        proc.send_signal(signal.SIGHUP)
        time.sleep(2.5)
        assert proc.poll() is None  # the shipper thread used to die on it, and the agent with it
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "event=reload_failed" in err and "gone.pem: no such file" in err and proc.returncode == 0
    assert "Traceback" not in err


def test_clock_backwards_skips_and_shows_in_status(in_process, fake_registry: None,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    service, cfg_path = in_process()
    now = [1_790_000_030.0]
    monkeypatch.setattr(polljob.time, "time", lambda: now[0])
    service.poll_job()
    now[0] -= 300  # the clock steps 5 minutes back: less than back_limit, it catches up soon
    assert back_limit(service.config.agent.interval) > 300
    service.poll_job()
    now[0] += 300 + 60
    service.poll_job()
    assert service.fatal is None
    times = [parse_unverified(t).time for t in service.spool.unshipped()]
    assert times == [1_789_999_980, 1_790_000_040]
    st = json.loads(run_cli("status", "--config", str(cfg_path), "--json").stdout)
    assert [e["kind"] for e in st["clock_events"]] == ["clock_backwards"]
    assert st["clock_events"][0]["detail"]["last"] == "2026-09-21T14:13:00Z"
    assert st["clock_events"][0]["detail"]["action"] == "skip"


def test_a_heartbeat_signed_far_ahead_does_not_silence_the_agent(in_process, fake_registry: None,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # A boot with the clock a day ahead and no collector to compare with: one heartbeat signed
    # then. Once the clock is right the agent signs on, with a time before that one (an alert at
    # the collector, heartbeat-v1.md §3 rule 5), where it used to sign nothing for a day.
    service, cfg_path = in_process()
    now = [1_790_000_030.0 + 86400]
    monkeypatch.setattr(polljob.time, "time", lambda: now[0])
    service.poll_job()
    now[0] -= 86400  # NTP puts it right
    service.poll_job()  # no collector has confirmed our clock yet: skipped, as before
    assert len(list(service.spool.unshipped())) == 1
    service.collector_clock.saw(email.utils.formatdate(now[0], usegmt=True))  # the collector agrees
    service.poll_job()
    now[0] += 60
    service.poll_job()
    assert service.fatal is None
    beats = [parse_unverified(t) for t in service.spool.unshipped()]
    assert [b.time for b in beats] == [1_789_999_980 + 86400, 1_789_999_980, 1_790_000_040]
    assert [b.seq for b in beats] == [1, 2, 3]
    assert [b.prev for b in beats[1:]] == [token_digest(t) for t in list(service.spool.unshipped())[:2]]
    chains = analyze(beats)  # what the collector and tr7-audit make of it: an alert only
    report = chains.reports[beats[0].kid]
    assert report.clock_back == [2] and not chains.quarantined and not report.breaks and not report.gaps
    st = json.loads(run_cli("status", "--config", str(cfg_path), "--json").stdout)
    assert [(e["kind"], e["detail"]["action"]) for e in st["clock_events"]] == [
        ("clock_backwards", "signed"), ("clock_backwards", "skip")]


def test_a_clock_just_over_300_s_ahead_signs_nothing_the_collector_would_refuse(
        in_process, fake_registry: None, monkeypatch: pytest.MonkeyPatch) -> None:
    # Time-edge review: the limit was 305 s, so a slot signed 301-305 s ahead of the collector's
    # clock came back time.future (heartbeat-v1.md §4: more than 300 s ahead), a gap in the chain.
    # A Date header is whole seconds and sent before it is read, so the estimate is never short.
    service, _cfg = in_process()
    slot = 1_790_000_040.0
    now = [slot]
    monkeypatch.setattr(polljob.time, "time", lambda: now[0])
    service.collector_clock.saw(email.utils.formatdate(slot - 301, usegmt=True))
    service.poll_job()
    assert list(service.spool.unshipped()) == []
    now[0] = slot + 60
    service.collector_clock.saw(email.utils.formatdate(slot + 60 - 299, usegmt=True))
    service.poll_job()
    assert [parse_unverified(t).time for t in service.spool.unshipped()] == [1_790_000_100]


def test_no_slot_before_the_collectors_enrolment_instant_is_signed(in_process, fake_registry: None,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # Time-edge review: with our clock behind the collector's, the first slot could come before
    # the enrolment instant the collector recorded: rejected as key.window, and the key's seq 1
    # gone for good (every month's chain then begins unanchored). Not signed; the seq is kept.
    service, cfg_path = in_process()
    state = service.config.agent.state_dir
    record = {"kid": service.key.kid, "provider": "acme", "enrolled_at": "2026-09-21T14:14:30Z"}
    (state / "enrollment.json").write_text(json.dumps(record))
    service.enrolled_at = startup.enrolled_at(state / "enrollment.json", service.key.kid)  # as start() does
    now = [1_790_000_045.0]  # the slot 14:14:00, before 14:14:30
    monkeypatch.setattr(polljob.time, "time", lambda: now[0])
    service.poll_job()
    assert list(service.spool.unshipped()) == []
    now[0] += 60
    service.poll_job()
    beats = [parse_unverified(t) for t in service.spool.unshipped()]
    assert [(b.seq, b.time) for b in beats] == [(1, 1_790_000_100)]
    st = json.loads(run_cli("status", "--config", str(cfg_path), "--json").stdout)
    assert [(e["kind"], e["detail"]["enrolled_at"]) for e in st["clock_events"]] == [
        ("before_enrolment", "2026-09-21T14:14:30Z")]
    # what does not name our key, or does not read, leaves the collector to judge
    assert startup.enrolled_at(state / "enrollment.json", "another") is None
    (state / "enrollment.json").write_text(json.dumps({**record, "enrolled_at": None}))
    assert startup.enrolled_at(state / "enrollment.json", service.key.kid) is None
    (state / "enrollment.json").write_text(json.dumps({**record, "enrolled_at": "2026-09-21T14:14:30.2Z"}))
    assert startup.enrolled_at(state / "enrollment.json", service.key.kid) == 1_790_000_071
    assert startup.enrolled_at(state / "gone.json", service.key.kid) is None


def test_a_clock_gone_back_signs_no_past_slot(in_process, fake_registry: None,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # Diff review: our clock reset to a day ago (an RTC reset, a VM resumed with an old clock)
    # would have signed past slots with today's instances, billed as if they ran then. The
    # collector's clock says ours is the wrong one: nothing is signed until it is right again.
    service, _cfg = in_process()
    now = [1_790_000_030.0]
    monkeypatch.setattr(polljob.time, "time", lambda: now[0])
    service.poll_job()
    service.collector_clock.saw(email.utils.formatdate(now[0], usegmt=True))
    now[0] -= 86400  # our clock jumps a day back; the collector's does not
    service.poll_job()
    service.poll_job()
    assert [parse_unverified(t).time for t in service.spool.unshipped()] == [1_789_999_980]


def test_a_clock_stepped_back_between_polls_is_reported(in_process, fake_registry: None,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # A real step back leaves the scheduler's next run in the future: no poll ran to notice it
    service, cfg_path = in_process()
    wall, mono = [1_790_000_030.0], [500.0]
    monkeypatch.setattr(polljob.time, "time", lambda: wall[0])
    monkeypatch.setattr(polljob.time, "monotonic", lambda: mono[0])
    clocks = service.watch_clock(wall[0], mono[0])
    wall[0] += 5.5
    mono[0] += 5  # a wake 5 s later; the wall clock may drift a little: not a step
    clocks = service.watch_clock(*clocks)
    assert service.clock_back == 0.0 and service.metrics.clock_jumps._value.get() == 0
    wall[0] -= 35
    mono[0] += 5  # the wall clock stepped 40 s back between two wakes
    service.watch_clock(*clocks)
    assert round(service.clock_back) == 40 and service.metrics.clock_jumps._value.get() == 1
    service.poll_job()  # the next poll records it
    assert service.clock_back == 0.0
    st = json.loads(run_cli("status", "--config", str(cfg_path), "--json").stdout)
    assert [(e["kind"], e["detail"]["back_seconds"]) for e in st["clock_events"]] == [("clock_backwards", 40)]


def test_aligned_start() -> None:
    assert aligned_start(300, 1_790_000_001.5).timestamp() == 1_790_000_100
    assert aligned_start(60, 1_790_000_041).timestamp() == 1_790_000_100
    assert aligned_start(60, 1_790_000_040).timestamp() == 1_790_000_100


def test_heartbeat_written_with_no_instances_and_failed_adapter(in_process, fake_registry: None,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    service, _cfg = in_process(300, [{"name": "empty", "platform": "kvm", "instances": 0},
                                     {"name": "down", "platform": "kvm", "fail": "host unreachable"}])
    monkeypatch.setattr(polljob.time, "time", lambda: 1_790_000_123.9)
    service.poll_job()
    [token] = list(service.spool.unshipped())
    hb = parse_unverified(token)
    assert hb.time == 1_790_000_100 and hb.interval == 300 and hb.seq == 1  # the slot, not "now"
    assert hb.observations == []
    assert hb.polls == [{"adapter": "empty", "platform": "kvm", "ok": True, "error": None},
                        {"adapter": "down", "platform": "kvm", "ok": False, "error": "host unreachable"}]


def test_sighup_new_interval_reschedules_on_its_grid(tmp_path: Path) -> None:
    state = tmp_path / "s"
    state.mkdir()
    save_private_key(AgentKey.generate(), state / "agent.key")
    cfg = write_config(tmp_path / "a.toml", {"state_dir": str(state), "interval": 1,
                                             "allow_short_interval": True},
                       [{"name": "l", "platform": "kvm"}])
    proc = subprocess.Popen([str(AGENT), "run", "--config", str(cfg)], stderr=subprocess.PIPE, text=True,
                            env=agent_env())

    def beats() -> list:
        if not (state / "spool.db").exists():
            return []
        spool = Spool(state / "spool.db", readonly=True)
        try:
            return [parse_unverified(t) for t in spool.unshipped()]
        except sqlite3.OperationalError:
            return []  # the file exists but the agent has not created its tables yet
        finally:
            spool.close()

    try:
        _wait(lambda: len(beats()) >= 2)
        cfg.write_text(cfg.read_text().replace("interval = 1", "interval = 2"))
        proc.send_signal(signal.SIGHUP)
        _wait(lambda: sum(1 for hb in beats() if hb.interval == 2) >= 2)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    hbs = beats()
    assert [hb.seq for hb in hbs] == list(range(1, len(hbs) + 1))
    assert all(hb.time % 2 == 0 for hb in hbs if hb.interval == 2)
    assert [hb.interval for hb in hbs] == sorted(hb.interval for hb in hbs)  # 1 s ones, then 2 s ones


def test_a_reload_that_closes_the_poller_as_a_slot_begins_is_not_fatal(
    in_process, fake_registry: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """poll_job takes the poller, then a reload swaps and closes it before poll_all submits:
    the slot is polled with the new one (it raised 'cannot schedule new futures after shutdown',
    and the agent died, losing the slot's heartbeat)."""
    service, _cfg = in_process()
    old = service.poller
    real = Poller.poll_all

    def reload_in_between(self: Poller):
        if self is old:
            service.poller = Poller(service.config.adapters)  # what reload() does, under its lock
            old.close()  # the new one is closed by the fixture
        return real(self)

    monkeypatch.setattr(Poller, "poll_all", reload_in_between)
    died = []
    monkeypatch.setattr(service, "_die", died.append)
    service.poll_job()
    assert died == [] and len(list(service.spool.unshipped())) == 1


def test_a_reload_during_a_poll_closes_the_old_adapters_once_their_poll_ended(
    in_process, fake_registry: None
) -> None:
    """A reload closed the old poller's adapters under a poll still running: a vSphere session was
    logged out mid-poll, and the slot was signed with that adapter failed, its instances unseen."""
    import threading

    service, _cfg = in_process(adapters=[{"name": "l", "platform": "kvm", "delay": 1.0}])
    old = service.poller
    outcome = []
    poll = threading.Thread(target=lambda: outcome.append(old.poll_all()))
    poll.start()
    _wait(lambda: old.adapters["l"].__dict__.get("polling", False))  # the poll is under way
    service.reload()  # the same configuration: a new poller all the same
    assert service.poller is not old
    poll.join(10)
    assert [(a.ok, a.error, len(a.observations)) for a in outcome[0].adapters] == [(True, None, 2)]
    adapter = old.adapters["l"]
    _wait(lambda: adapter.__dict__.get("closed", False))  # and closed once it ended


def test_a_stop_right_after_a_reload_during_a_poll_still_closes_the_old_adapters(
    in_process, fake_registry: None
) -> None:
    """The old adapters are closed in a daemon thread once their poll ends: a stop right after the
    reload ended the process first, and their sessions (vSphere's) were left to the idle timeout."""
    import threading

    service, _cfg = in_process(adapters=[{"name": "l", "platform": "kvm", "delay": 1.0}])
    old = service.poller
    poll = threading.Thread(target=old.poll_all)
    poll.start()
    _wait(lambda: old.adapters["l"].__dict__.get("polling", False))
    service.reload()
    assert service.shutdown() == 0
    assert old.adapters["l"].__dict__.get("closed", False), "the old adapter was left open at the stop"
    poll.join(10)


def test_a_second_agent_on_the_same_state_directory_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "s"
    state.mkdir()
    save_private_key(AgentKey.generate(), state / "agent.key")
    cfg = write_config(tmp_path / "a.toml", {"state_dir": str(state), "interval": 60},
                       [{"name": "l", "platform": "kvm"}])
    first = subprocess.Popen([str(AGENT), "run", "--config", str(cfg)], env=agent_env(),
                             stderr=subprocess.PIPE, text=True)
    try:
        _wait(lambda: (state / "agent.lock").exists() and (state / "agent.lock").read_text().strip())
        second = run_cli("run", "--config", str(cfg), timeout=60)
        assert second.returncode == 1
        assert f"another tr7-agent (pid {first.pid}) runs on the state directory" in second.stderr
    finally:
        first.terminate()
        first.wait(30)


def test_sighup_is_ignored_from_main_until_the_service_handles_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The service's start-up (imports, key, spool, adapters) runs before its handler exists: a
    SIGHUP then killed the agent without a word (the default action). `run` ignores it first."""
    from agent import cli

    cfg = write_config(tmp_path / "a.toml", {"state_dir": str(tmp_path / "s"), "interval": 60},
                       [{"name": "l", "platform": "kvm"}])
    seen = []
    monkeypatch.setattr(Service, "serve", lambda self: seen.append(signal.getsignal(signal.SIGHUP)) or 0)
    try:
        with pytest.raises(SystemExit) as done:
            cli.main(["run", "--config", str(cfg)])
        assert done.value.code == 0 and seen == [signal.SIG_IGN]
    finally:
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
