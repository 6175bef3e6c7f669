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
    assert "ok (1 adapter, interval" in out.stdout


def test_an_invalid_key_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(VALID.format(state=tmp_path / "state").replace('uri = ', 'url = '))
    out = _validate(path)
    assert out.returncode == 2
    assert "line 8" in out.stderr or ":8" in out.stderr, out.stderr


def _with(tmp_path: Path, extra: str, raw: bytes = b"") -> Path:
    path = tmp_path / "agent.toml"
    text = VALID.format(state=tmp_path / "state").replace("[agent]\n", f"[agent]\n{extra}\n", 1)
    path.write_bytes(text.encode() + raw)
    return path


def test_what_run_cannot_use_is_refused_by_validate_with_its_line(tmp_path: Path) -> None:
    """Each passed validate, then killed `run` (a traceback, or exit 1 at every start). Found by a review."""
    cases = [
        ('collector = "http://host:port/"', ":2: [agent] collector: is not a usable URL"),
        ('metrics_listen = "127.0.0.1:99999"', ":2: [agent] metrics_listen: the port must be from 1 to"),
        ('metrics_listen = "127.0.0.1:0"', "the port must be from 1 to 65535"),
    ]
    for extra, said in cases:
        out = _validate(_with(tmp_path, extra))
        assert out.returncode == 2 and said in out.stderr, (extra, out.stderr)
        assert "Traceback" not in out.stderr


def test_files_that_are_no_config_are_named_not_tracebacks(tmp_path: Path) -> None:
    out = _validate(_with(tmp_path, "", b"# caf\xe9\n"))
    assert out.returncode == 2 and ": not UTF-8 text" in out.stderr and "Traceback" not in out.stderr
    path = tmp_path / "plain.toml"
    path.write_text(f'adapters = ["kvm"]\n[agent]\nstate_dir = "{tmp_path}"\n')
    out = _validate(path)
    assert out.returncode == 2 and "adapters must be array tables [[adapters]]" in out.stderr
