"""`tr7-agent config validate`: what the package's post-install script relies on."""

import subprocess
import sys
from pathlib import Path

VALID = """[agent]
interval = 300
state_dir = "{state}"

[[adapters]]
name = "kvm-local"
platform = "kvm"
uri = "test:///default"
"""


def _validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", "config", "validate", "--config", str(path)],
                          capture_output=True, text=True, check=False)


def test_the_shipped_sample_is_not_startable(tmp_path: Path) -> None:
    sample = subprocess.run([sys.executable, "-m", "agent.cli", "config", "sample"],
                            capture_output=True, text=True, check=True).stdout
    path = tmp_path / "agent.toml"
    path.write_text(sample)
    out = _validate(path)
    assert out.returncode == 2
    assert "nothing to poll" in out.stderr


def test_a_configured_agent_validates(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(VALID.format(state=tmp_path / "state"))
    out = _validate(path)
    assert out.returncode == 0, out.stderr
    assert "1 adapters" in out.stdout


def test_an_invalid_key_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(VALID.format(state=tmp_path / "state").replace('uri = ', 'url = '))
    out = _validate(path)
    assert out.returncode == 2
    assert "line 8" in out.stderr or ":8" in out.stderr, out.stderr
