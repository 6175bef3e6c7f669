"""What validate and `run` refuse alike, naming the key: a collector URL's port and host, the state
directory, no adapter, a metrics address in use; and a batch cut by a 413 growing back."""

import gzip
import socket
from pathlib import Path

import httpx
import pytest
from conftest import run_cli, spooled_state, write_config

from agent import shipper as shipper_mod
from agent.config import AgentSettings, ConfigError, load_config, require_adapters
from agent.shipper import Shipper
from protocol.heartbeat import parse_unverified

ADAPTERS = [{"name": "lab", "platform": "kvm", "instances": 1}]


def test_a_collector_url_that_would_reach_another_port_or_no_host_is_refused(tmp_path: Path) -> None:
    """Port 99999 validated and reached 34463 (mod 65536), with the enrolment and bearer tokens."""
    for url, why in (("http://127.0.0.1:99999", "the port must be from 1 to 65535"),
                     ("https://collector.example.net:0", "the port must be from 1 to 65535"),
                     ("http://:8443", "must name a host"),
                     ("https://collector.example.net/?x=1", "is the collector's base URL, without ?query"),
                     ("ftp://collector.example.net", "must be an http:// or https:// URL")):
        agent = {"collector": url, "state_dir": str(tmp_path / "s")}
        cfg = write_config(tmp_path / "a.toml", agent, ADAPTERS)
        res = run_cli("config", "validate", "--config", str(cfg))
        assert res.returncode == 2 and f"{cfg}:2: [agent] collector: {why}" in res.stderr, (url, res.stderr)
    assert AgentSettings(collector="https://collector.example.net:8443/").collector == \
        "https://collector.example.net:8443"


@pytest.mark.parametrize("state_dir", ["", "  ", "var/lib/tr7-agent", "."])
def test_an_empty_or_relative_state_dir_is_refused_with_its_line(tmp_path: Path, state_dir: str) -> None:
    """They meant the directory each command was started in: `key` wrote agent.key there, `status`
    from elsewhere saw no agent."""
    cfg = write_config(tmp_path / "a.toml", {"interval": 60, "state_dir": state_dir}, ADAPTERS)
    for command in (("config", "validate"), ("key",)):
        res = run_cli(*command, "--config", str(cfg))
        assert res.returncode == 2 and f"{cfg}:3: [agent] state_dir: " in res.stderr, res.stderr
        assert "absolute path" in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.toml"]


def test_run_refuses_a_file_with_no_adapter_as_validate_does(tmp_path: Path) -> None:
    """validate said "nothing to poll"; `run` started and signed empty heartbeats for ever."""
    state = tmp_path / "s"
    cfg = write_config(tmp_path / "a.toml", {"state_dir": str(state), "interval": 1,
                                             "allow_short_interval": True}, [])
    validate = run_cli("config", "validate", "--config", str(cfg))
    run = run_cli("run", "--config", str(cfg))
    for res in (validate, run):
        assert res.returncode == 2 and f"{cfg}: no [[adapters]] table: nothing to poll" in res.stderr
    assert "event=config_error" in run.stderr and not state.exists()


def test_a_metrics_address_in_use_is_named_with_its_key(tmp_path: Path) -> None:
    """"[Errno 98] Address already in use" named neither metrics_listen nor the address."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        listen = f"127.0.0.1:{busy.getsockname()[1]}"
        cfg = write_config(tmp_path / "a.toml", {"state_dir": str(tmp_path / "s"), "interval": 60,
                                                 "metrics_listen": listen}, ADAPTERS)
        assert run_cli("key", "--config", str(cfg)).returncode == 0
        res = run_cli("run", "--config", str(cfg))
    assert res.returncode == 1 and "event=startup_failed" in res.stderr
    assert f"[agent] metrics_listen = {listen}: cannot listen there: Address already in use" in res.stderr


def test_a_batch_cut_by_a_413_grows_back_after_full_batches(tmp_path: Path, monkeypatch) -> None:
    """A proxy limit lifted (or a slow link recovered after 408s) left the batch small for good."""
    monkeypatch.setattr(shipper_mod, "MAX_LINES", 48)
    limit, sizes = [10], []

    def answer(request: httpx.Request) -> httpx.Response:
        lines = gzip.decompress(request.content).decode().split("\n")
        sizes.append(len(lines))
        if len(lines) > limit[0]:
            return httpx.Response(413, text="too large")
        return httpx.Response(200, json={"results": [{"seq": parse_unverified(t).seq, "status": "accepted"}
                                                     for t in lines]})

    _state, _key, spool = spooled_state(tmp_path, 240)
    settings = AgentSettings(collector="http://collector.invalid", state_dir=tmp_path / "s", interval=60)
    shipper = Shipper(settings, spool, client=httpx.Client(transport=httpx.MockTransport(answer)))
    for _ in range(4):
        assert shipper.ship_once() == 0.0
    assert sizes == [48, 24, 12, 6] and shipper.batch_lines == 6
    limit[0] = 10_000  # the proxy's limit lifted
    for _ in range(shipper_mod.GROW_AFTER):
        assert shipper.ship_once() == 0.0
    assert shipper.batch_lines == 12
    while shipper.ship_once() is not None:
        pass
    assert spool.stats()["spool_depth"] == 0 and sum(sizes[3:]) == 240  # no 413 after the lift
    assert 24 in sizes[3:] and max(sizes[3:]) <= 48  # it goes on growing, up to the configured size
    spool.close()


def test_reload_refuses_a_file_with_no_adapter(in_process, fake_registry: None, caplog) -> None:
    """A reload onto the commented sample would have polled nothing: logged and ignored."""
    service, cfg_path = in_process()
    cfg_path.write_text(cfg_path.read_text().split("[[adapters]]")[0])
    with pytest.raises(ConfigError):  # what load_config alone lets through
        require_adapters(load_config(cfg_path))
    with caplog.at_level("ERROR"):
        service.reload()
    assert "event=reload_failed" in caplog.text and "nothing to poll" in caplog.text
    assert len(service.config.adapters) == 1
