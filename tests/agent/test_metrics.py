"""Prometheus metrics and the spool-size alarm (which never deletes unshipped heartbeats)."""

import logging
import socket
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest
from conftest import AGENT, agent_env, enrolled_agent, write_config

from agent.config import load_config
from agent.service import Service
from agent.spool import Spool
from agent.startup import load_key
from protocol.keys import AgentKey, save_private_key


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _value(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not exported")


def test_metrics_endpoint(tmp_path: Path, make_collector) -> None:
    collector = make_collector()
    port = _free_port()
    cfg = enrolled_agent(tmp_path, collector, metrics_listen=f"127.0.0.1:{port}",
                         adapters=[{"name": "lab", "platform": "kvm", "instances": 3},
                                   {"name": "down", "platform": "kvm", "fail": "unreachable"}])
    proc = subprocess.Popen([str(AGENT), "run", "--config", str(cfg)], env=agent_env(),
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
                if _value(text, "tr7_agent_heartbeats_shipped_total") >= 2:
                    break
            except (httpx.HTTPError, AssertionError):
                pass
            assert time.monotonic() < deadline
            time.sleep(0.3)
    finally:
        proc.terminate()
        proc.wait(30)
    assert 'tr7_agent_build_info{version="' in text
    assert _value(text, 'tr7_agent_polls_total{adapter="lab"}') >= 2
    assert _value(text, 'tr7_agent_poll_failures_total{adapter="down"}') >= 2
    assert _value(text, 'tr7_agent_poll_failures_total{adapter="lab"}') == 0  # a series before any failure
    assert _value(text, 'tr7_agent_observed_instances{adapter="lab"}') == 3
    assert _value(text, "tr7_agent_heartbeats_signed_total") >= 2
    assert _value(text, "tr7_agent_heartbeats_rejected_total") == 0
    for name in ("tr7_agent_poll_duration_seconds_count", "tr7_agent_spool_depth",
                 "tr7_agent_spool_oldest_age_seconds", "tr7_agent_spool_bytes", "tr7_agent_spool_over_limit",
                 "tr7_agent_disk_full"):
        _value(text, name)


def test_spool_over_limit_alarms_and_keeps_everything(tmp_path: Path, fake_registry: None,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    state = tmp_path / "s"
    state.mkdir()
    save_private_key(AgentKey.generate(), state / "agent.key")
    cfg = write_config(tmp_path / "a.toml", {"state_dir": str(state), "spool_limit_mb": 1}, [])
    service = Service(load_config(cfg))
    service.key = load_key(service.config)
    service.spool = Spool(state / "spool.db")
    polls = [{"adapter": "lab", "platform": "kvm", "ok": True, "error": None}]
    obs = [{"instance": f"tr7-{uuid.uuid4().hex}", "adapter": "lab", "vm": str(uuid.uuid4()), "host": None,
            "state": "running", "capacity": None} for _ in range(500)]
    n = 0
    while service.spool.used_bytes() <= 1024 * 1024:
        n += 1
        service.spool.append(service.key, 1_790_000_000 + 60 * n, 60, polls, obs)
    with caplog.at_level(logging.ERROR):
        service._gauges()
    assert service.metrics.spool_alarm._value.get() == 1
    assert "event=spool_over_limit" in caplog.text
    assert service.spool.stats()["spool_depth"] == n
