"""The shipped systemd units are hardened (exposure <= 1.5), pass `systemd-analyze verify`, and
the commands they run are valid."""

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "systemd"
SERVICES = ["tr7-agent.service", "tr7-collector.service", "tr7-collector-prune.service"]
NAMES = [*SERVICES, "tr7-collector-prune.timer"]


def _exposure(unit: Path) -> float:
    out = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True, text=True, check=False,
    )
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out.stdout + out.stderr)
    assert m, out.stdout + out.stderr
    return float(m.group(1))


@pytest.mark.parametrize("name", SERVICES)
def test_unit_exposure_is_at_most_1_5(name: str) -> None:
    assert _exposure(UNITS / name) <= 1.5


def test_exposure_check_would_catch_a_weakened_unit(tmp_path: Path) -> None:
    # Guard against a check that cannot fail: strip the hardening and the score must rise.
    text = (UNITS / "tr7-agent.service").read_text()
    weak = "\n".join(line for line in text.splitlines()
                     if not re.match(r"(Protect|Private|Restrict|SystemCall|Capability)", line))
    unit = tmp_path / "tr7-agent.service"
    unit.write_text(weak)
    assert _exposure(unit) > 1.5


def test_units_verify(tmp_path: Path) -> None:
    # verify needs the unit's executables and the system targets: lay them out in a root.
    root = tmp_path / "root"
    (root / "usr/bin").mkdir(parents=True)
    (root / "bin").mkdir()
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copytree("/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    shutil.copy("/bin/kill", root / "bin/kill")
    for exe in ("tr7-agent", "tr7-collector"):
        (root / "usr/bin" / exe).write_text("#!/bin/sh\n")
        (root / "usr/bin" / exe).chmod(0o755)
    for name in NAMES:
        shutil.copy(UNITS / name, root / "etc/systemd/system" / name)
    out = subprocess.run(["systemd-analyze", "verify", f"--root={root}", *NAMES],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stderr.strip() == ""


def test_agent_unit_integrates_with_the_service_manager() -> None:
    text = (UNITS / "tr7-agent.service").read_text()
    for line in ("Type=notify", "Restart=on-failure", "StateDirectory=tr7-agent", "ProtectSystem=strict"):
        assert line in text
    assert re.search(r"^WatchdogSec=\S+", text, re.M)
    assert re.search(r"^LoadCredential=\S+", text, re.M)


def _setting(text: str, key: str) -> str:
    m = re.search(rf"^{key}=(.*)$", text, re.M)
    assert m, key
    return m.group(1)


def test_prune_unit_runs_a_valid_prune_of_every_provider(tmp_path: Path) -> None:
    """The timer's service runs `prune --keep-months` with its Environment= defaults: run that very
    command line (the data directory and archive moved to tmp_path) and it prunes, not errs."""
    text = (UNITS / "tr7-collector-prune.service").read_text()
    env = dict(kv.split("=", 1) for kv in shlex.split(_setting(text, "Environment")))
    assert env == {"TR7_PRUNE_KEEP_MONTHS": "24", "TR7_PRUNE_ARCHIVE": "/var/lib/tr7-collector-archive",
                   "TR7_PRUNE_COPY": "", "TR7_COLLECTOR_DATA_DIR": "/var/lib/tr7-collector"}
    env["TR7_PRUNE_ARCHIVE"] = str(tmp_path / "archive")
    env["TR7_COLLECTOR_DATA_DIR"] = str(tmp_path / "data")  # as collector.env may set it
    argv = shlex.split(re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], _setting(text, "ExecStart")))
    assert argv[0] == "/usr/bin/tr7-collector" and "--provider" not in argv
    assert "--compress" in argv  # an archive of .tar.gz files, ~1/40 of the bundles' directories
    argv = [str(Path(sys.executable).parent / "tr7-collector"), *argv[1:]]
    assert "--data-dir" not in argv  # from the environment, as the operator's shell commands
    out = subprocess.run(argv, capture_output=True, text=True, check=False,
                         env={"PATH": "/usr/bin:/bin", "TR7_COLLECTOR_ENV_FILE": "/dev/null",
                              "TR7_COLLECTOR_DATA_DIR": env["TR7_COLLECTOR_DATA_DIR"]})
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "data" / "collector.key").exists()
    assert "left to prune for any provider" in out.stdout
    # the archive is one of the unit's state directories: writable under ProtectSystem=strict
    assert "tr7-collector-archive" in _setting(text, "StateDirectory").split()
    timer = (UNITS / "tr7-collector-prune.timer").read_text()
    assert _setting(timer, "Persistent") == "true" and _setting(timer, "OnCalendar")


def test_agent_reload_checks_the_file_and_a_config_error_is_not_restarted(tmp_path: Path) -> None:
    """`systemctl reload` runs ExecReload= in order and fails at the first that fails: the check
    must fail on a broken file (the agent itself only logs that it kept the old one), and
    `run`'s exit status for a broken file must be the one the unit does not restart on."""
    text = (UNITS / "tr7-agent.service").read_text()
    reloads = re.findall(r"^ExecReload=(.*)$", text, re.M)
    assert len(reloads) == 2 and reloads[1] == "/bin/kill -HUP $MAINPID"
    check = shlex.split(reloads[0])
    assert check[0] == "/usr/bin/tr7-agent"
    agent = str(REPO / ".venv" / "bin" / "tr7-agent")
    good = tmp_path / "good.toml"
    good.write_text(f'[agent]\nstate_dir = "{tmp_path}"\n\n[[adapters]]\nname = "kvm"\nplatform = "kvm"\n')
    bad = tmp_path / "bad.toml"
    bad.write_text("[agent]\nintervall = 300\n")

    def run(cmd: list[str], conf: Path) -> int:
        args = [agent, *cmd[1:]]
        args[args.index("/etc/tr7-agent/agent.toml")] = str(conf)
        return subprocess.run(args, capture_output=True, check=False).returncode

    assert run(check, good) == 0 and run(check, bad) != 0
    start = shlex.split(_setting(text, "ExecStart"))
    assert run(start, bad) == int(_setting(text, "RestartPreventExitStatus"))


def test_the_service_and_shell_commands_find_the_same_data_directory() -> None:
    """Both collector units passed --data-dir /var/lib/tr7-collector, which wins over the
    environment: a TR7_COLLECTOR_DATA_DIR set in collector.env moved the operator's commands (they
    read that file) but not the service, and `apply` made a second collector there. Found by an ops
    review. The default is the units' Environment=, which collector.env overrides (systemd.exec)."""
    for unit in ("tr7-collector.service", "tr7-collector-prune.service"):
        text = (UNITS / unit).read_text()
        assert "--data-dir" not in _setting(text, "ExecStart"), unit
        env = dict(kv.split("=", 1) for kv in shlex.split(_setting(text, "Environment")))
        assert env["TR7_COLLECTOR_DATA_DIR"] == "/var/lib/tr7-collector", unit
        assert _setting(text, "EnvironmentFile") == "-/etc/tr7-collector/collector.env", unit
    documented = (REPO / "packaging" / "collector" / "collector.env").read_text()
    assert "#TR7_COLLECTOR_DATA_DIR=/var/lib/tr7-collector" in documented
