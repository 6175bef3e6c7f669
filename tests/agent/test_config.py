"""Configuration: errors name the key and the line; short intervals need an explicit opt-in."""

import tomllib
from pathlib import Path

import pytest
from conftest import run_cli, write_config

from agent.config import ConfigError, load_config

ADAPTER = {"name": "lab", "platform": "kvm", "instances": 1}


def _cfg(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "agent.toml"
    p.write_text(text)
    return p


def test_unknown_agent_key_names_key_and_line(tmp_path: Path) -> None:
    p = _cfg(tmp_path, '[agent]\ncollector = "http://127.0.0.1:1"\n\nintervall = 300\n')
    res = run_cli("run", "--config", str(p))
    assert res.returncode == 2
    assert f"{p}:4:" in res.stderr and "intervall" in res.stderr and "unknown key" in res.stderr


def test_adapter_error_names_table_key_and_line(tmp_path: Path, fake_registry: None) -> None:
    p = _cfg(tmp_path, '[agent]\ninterval = 300\n\n[[adapters]]\nname = "a"\nplatform = "kvm"\n\n'
                       '[[adapters]]\nname = "b"\nplatform = "kvm"\ninstances = "many"\n')
    with pytest.raises(ConfigError) as err:
        load_config(p)
    assert f"{p}:11:" in str(err.value) and "[[adapters]] #2 instances" in str(err.value)


def test_unknown_platform_and_duplicate_names(tmp_path: Path, fake_registry: None) -> None:
    p = _cfg(tmp_path, '[agent]\n[[adapters]]\nname = "a"\nplatform = "xen"\n')
    with pytest.raises(ConfigError, match=r":4: \[\[adapters\]\] #1 platform: unknown platform 'xen'"):
        load_config(p)
    p = _cfg(tmp_path, '[agent]\n[[adapters]]\nname = "a"\nplatform = "kvm"\n'
                       '[[adapters]]\nname = "a"\nplatform = "kvm"\n')
    with pytest.raises(ConfigError, match=r":6: \[\[adapters\]\] #2 name: adapter name 'a' used twice"):
        load_config(p)


def test_invalid_toml_gives_the_position(tmp_path: Path) -> None:
    p = _cfg(tmp_path, "[agent]\ninterval = = 3\n")
    res = run_cli("check", "--config", str(p))
    assert res.returncode == 2 and "line 2" in res.stderr


def test_short_interval_refused_unless_allowed(tmp_path: Path, fake_registry: None) -> None:
    p = write_config(tmp_path / "a.toml", {"interval": 10}, [ADAPTER])
    res = run_cli("run", "--config", str(p))
    assert res.returncode == 2
    assert f"{p}:2:" in res.stderr and "interval 10 is below 60" in res.stderr
    p = write_config(tmp_path / "b.toml", {"interval": 10, "allow_short_interval": True}, [ADAPTER])
    assert load_config(p).agent.interval == 10
    p = write_config(tmp_path / "c.toml", {"interval": 7200}, [ADAPTER])
    with pytest.raises(ConfigError, match="interval"):
        load_config(p)


def test_sample_is_valid_and_documents_every_key(tmp_path: Path) -> None:
    res = run_cli("config", "sample")
    assert res.returncode == 0
    doc = tomllib.loads(res.stdout)
    assert set(doc) == {"agent"}
    p = _cfg(tmp_path, res.stdout)
    assert load_config(p).agent.interval == 300
    for key in ("state_dir", "interval", "metrics_listen", "ca_file", "token_file", "spool_limit_mb",
                "allow_short_interval", "name"):
        assert f"# {key} = " in res.stdout
    for platform in ("vmware", "kvm", "proxmox", "hyperv", "aws", "azure"):
        assert f'# platform = "{platform}"' in res.stdout
    # list-valued keys are shown as lists: filled in as a string, the file failed to load
    assert '# regions = ["<regions>"]' in res.stdout and '# subscriptions = ["<subscriptions>"]' in res.stdout


def test_version() -> None:
    res = run_cli("--version")
    assert res.returncode == 0 and res.stdout.startswith("tr7-agent ")


def test_an_adapters_timeout_stays_below_the_interval(tmp_path: Path, fake_registry: None) -> None:
    """Every adapter is waited for before the next poll: one allowed longer than the interval made
    the scheduler skip slots, and a healthy adapter's instance got one heartbeat in four."""
    p = _cfg(tmp_path, '[agent]\ninterval = 60\n\n[[adapters]]\nname = "k"\nplatform = "kvm"\n'
                       'timeout = 3600\n')
    # Lowered as the default is, and said where: earlier releases took it, and refusing it stopped
    # an upgraded agent at its next restart (an upgrade review)
    cfg = load_config(p)
    assert cfg.adapters[0].timeout == 48
    assert cfg.warnings == [f"{p}:7: [[adapters]] #1 timeout: 3600 s is not below [agent] interval 60 s: "
                            "48 s is used (every adapter is waited for before the next poll, so a slow one "
                            "would delay the others' heartbeats)"]
    res = run_cli("config", "validate", "--config", str(p))
    assert res.returncode == 0 and f"configuration warning: {p}:7: " in res.stderr
    p = _cfg(tmp_path, '[agent]\ninterval = 60\n\n[[adapters]]\nname = "k"\nplatform = "kvm"\ntimeout = 50\n'
                       '[[adapters]]\nname = "d"\nplatform = "kvm"\n')
    assert [a.timeout for a in load_config(p).adapters] == [50, 48]  # the default: 80% of the interval
    assert load_config(p).warnings == []
    p = _cfg(tmp_path, '[agent]\ninterval = 300\n\n[[adapters]]\nname = "d"\nplatform = "kvm"\n')
    assert load_config(p).adapters[0].timeout == 60


def test_a_collector_url_with_a_space_or_the_api_path_is_refused_by_name(tmp_path: Path) -> None:
    """Both passed validation and failed only at enroll, one with a bare HTTP 404."""
    for url, why in (("http://collector example.net", "without spaces"),
                     ("https://collector.example.net/v1", "base URL, without /v1")):
        p = _cfg(tmp_path, f'[agent]\ncollector = "{url}"\n')
        with pytest.raises(ConfigError, match=rf":2: \[agent\] collector: .*{why}"):
            load_config(p)
    behind_a_path = load_config(_cfg(tmp_path, '[agent]\ncollector = "https://proxy.example/tr7/"\n'))
    assert behind_a_path.agent.collector == "https://proxy.example/tr7"
