"""The .deb packages install into a fresh Debian root and behave like infrastructure packages.

Slow on purpose (a few minutes): it builds both packages with packaging/build.sh (nfpm) and
installs them with dpkg into a minimal Debian 12 made by debootstrap from Debian's mirror.
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MIRROR = os.environ.get("TR7_DEBIAN_MIRROR", "http://deb.debian.org/debian")
pytestmark = pytest.mark.slow


def run(*cmd: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    # stdin closed, as under unattended upgrades: a dpkg prompt fails rather than waits
    out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, check=False,
                         stdin=subprocess.DEVNULL)
    if check and out.returncode != 0:
        raise AssertionError(f"{cmd} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return out


@pytest.fixture(scope="module")
def debs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("dist")
    run("env", f"OUT={out}", "bash", REPO / "packaging/build.sh")
    found = {p.name.split("_")[0]: p for p in out.glob("*.deb")}
    assert set(found) == {"tr7-agent", "tr7-collector"}, found
    assert len(list(out.glob("*.rpm"))) == 2
    return found


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("debootstrap") is None:
        pytest.fail("debootstrap is missing: scripts/apt-packages.txt must install it")
    target = tmp_path_factory.mktemp("debian") / "root"
    deps = "python3,libvirt0,fonts-dejavu-core"  # what the packages depend on
    run("debootstrap", "--variant=minbase", f"--include={deps}", "bookworm", target, MIRROR)
    return target


def chroot(root: Path, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run("chroot", root, *cmd, check=check)


def install(root: Path, deb: Path) -> None:
    shutil.copy(deb, root / "tmp" / deb.name)
    chroot(root, "dpkg", "-i", f"/tmp/{deb.name}")


def test_install_upgrade_remove_purge(debs: dict[str, Path], root: Path) -> None:
    install(root, debs["tr7-agent"])
    install(root, debs["tr7-collector"])

    # Commands run from the installed tree (/opt virtualenvs on the distribution's python3).
    assert chroot(root, "tr7-agent", "--version").stdout.startswith("tr7-agent ")
    sample = chroot(root, "tr7-agent", "config", "sample").stdout
    assert "[agent]" in sample and "[[adapters]]" in sample
    assert chroot(root, "tr7-audit", "--version").returncode == 0
    assert "serve" in chroot(root, "tr7-collector", "--help").stdout
    assert os.readlink(root / "usr/bin/tr7-agent") == "/opt/tr7-agent/bin/tr7-agent"
    assert (root / "opt/tr7-agent/bin/python").resolve().name.startswith("python3")

    # System users from sysusers.d, secrets 0700, the state directory ready for `enroll` as the
    # service user before the first start; the config is the operator's, made from the sample
    # (the unit's ConditionPathExists keeps an unconfigured agent from starting).
    assert chroot(root, "getent", "passwd", "tr7-agent").returncode == 0
    assert chroot(root, "getent", "passwd", "tr7-collector").returncode == 0
    conf = root / "etc/tr7-agent/agent.toml"
    assert not conf.exists()
    assert (root / "etc/tr7-agent/credentials").stat().st_mode & 0o777 == 0o700
    assert (root / "usr/lib/systemd/system/tr7-agent.service").exists()
    for unit in ("tr7-collector.service", "tr7-collector-prune.service", "tr7-collector-prune.timer"):
        assert (root / "usr/lib/systemd/system" / unit).exists()
    # the prune schedule drops evidence from the database: never enabled unasked
    assert not (root / "etc/systemd/system/timers.target.wants/tr7-collector-prune.timer").exists()
    state = root / "var/lib/tr7-agent"
    assert state.stat().st_mode & 0o777 == 0o700
    assert chroot(root, "stat", "-c", "%U", "/var/lib/tr7-agent").stdout.strip() == "tr7-agent"
    chroot(root, "install", "-m", "0640", "-g", "tr7-agent", "/usr/share/doc/tr7-agent/agent.toml.sample",
           "/etc/tr7-agent/agent.toml")
    assert "[agent]" in conf.read_text()

    # Upgrade (reinstall), unattended: no conffile prompt; the edited config, key and spool kept.
    conf.write_text(conf.read_text() + "\n# edited by the operator\n")
    (state / "agent.key").write_text("key")
    install(root, debs["tr7-agent"])
    assert chroot(root, "dpkg-query", "-W", "-f", "${Status}", "tr7-agent").stdout == "install ok installed"
    assert conf.read_text().endswith("# edited by the operator\n")
    assert (state / "agent.key").exists()

    # Removal keeps configuration and state; purge deletes them.
    chroot(root, "dpkg", "-r", "tr7-agent")
    assert not (root / "opt/tr7-agent").exists()
    assert conf.exists() and (state / "agent.key").exists()
    chroot(root, "dpkg", "-P", "tr7-agent")
    assert not conf.exists() and not state.exists()


def test_an_upgrade_says_when_it_cannot_restart_the_agent(debs: dict[str, Path], root: Path) -> None:
    """An upgrade whose release refused the running agent's configuration restarted nothing and
    said nothing: the old process ran on until its next restart, where `run` refused the file
    (exit 2, not restarted) and the agent signed no more heartbeats. Found by an upgrade review.
    systemd is stood in for (the chroot has none): /run/systemd/system and a systemctl that logs."""
    install(root, debs["tr7-agent"])
    (root / "run/systemd/system").mkdir(parents=True, exist_ok=True)
    calls = root / "tmp/systemctl.log"
    fake = root / "usr/local/sbin/systemctl"
    fake.write_text('#!/bin/sh\necho "$*" >> /tmp/systemctl.log\nexit 0\n')  # is-active: yes
    fake.chmod(0o755)
    conf = root / "etc/tr7-agent/agent.toml"
    adapter = '[[adapters]]\nname = "lab"\nplatform = "kvm"\nuri = "test:///default"\n'
    try:
        # A value an earlier release took (a timeout not below the interval): restarted, and said.
        conf.write_text(f'[agent]\ninterval = 60\n\n{adapter}timeout = 60\n')
        calls.write_text("")
        out = chroot(root, "dpkg", "-i", f"/tmp/{debs['tr7-agent'].name}")
        assert "try-restart tr7-agent.service" in calls.read_text()
        assert "timeout: 60 s is not below [agent] interval 60 s: 48 s is used" in out.stderr
        # A file this release refuses: not restarted, and the upgrade says so and what to do.
        conf.write_text(f'[agent]\ninterval = 60\nno_such_key = 1\n\n{adapter}')
        calls.write_text("")
        out = chroot(root, "dpkg", "-i", f"/tmp/{debs['tr7-agent'].name}")
        assert "try-restart" not in calls.read_text()
        assert "no_such_key" in out.stderr and "NOT restarted" in out.stderr
        assert "systemctl restart tr7-agent" in out.stderr
    finally:
        fake.unlink()
        shutil.rmtree(root / "run/systemd")
        chroot(root, "dpkg", "-P", "tr7-agent")


def test_an_upgrade_does_not_move_the_collector_onto_another_data_directory(
    debs: dict[str, Path], root: Path
) -> None:
    """Earlier builds' unit served /var/lib/tr7-collector whatever collector.env said, while shell
    commands read its TR7_COLLECTOR_DATA_DIR; the unit now reads it too. Restarted by the upgrade,
    the service moved onto the other directory (a second collector an `apply` had made), answered
    the agents `kid.unknown` and they set those heartbeats aside. Found by an upgrade review."""
    install(root, debs["tr7-collector"])
    (root / "run/systemd/system").mkdir(parents=True, exist_ok=True)
    calls = root / "tmp/systemctl.log"
    fake = root / "usr/local/sbin/systemctl"
    fake.write_text('#!/bin/sh\necho "$*" >> /tmp/systemctl.log\nexit 0\n')
    fake.chmod(0o755)
    env = root / "etc/tr7-collector/collector.env"
    key = root / "var/lib/tr7-collector/collector.key"
    key.parent.mkdir(parents=True, exist_ok=True)
    key.write_text("the collector the agents know\n")
    original = env.read_text()
    try:
        env.write_text(original + 'TR7_COLLECTOR_DATA_DIR="/srv/tr7-collector"\n')
        calls.write_text("")
        out = chroot(root, "dpkg", "-i", f"/tmp/{debs['tr7-collector'].name}")
        assert "try-restart" not in calls.read_text() and "daemon-reload" in calls.read_text()
        assert "NOT restarted" in out.stderr and "TR7_COLLECTOR_DATA_DIR=/srv/tr7-collector" in out.stderr
        # read as systemd reads it: blanks around the `=` (the same directory elsewhere, else)
        env.write_text(original + "TR7_COLLECTOR_DATA_DIR = /srv/tr7-collector\n")
        calls.write_text("")
        out = chroot(root, "dpkg", "-i", f"/tmp/{debs['tr7-collector'].name}")
        assert "try-restart" not in calls.read_text() and "NOT restarted" in out.stderr
        for line in ("TR7_COLLECTOR_DATA_DIR=/var/lib/tr7-collector/\n", "#TR7_COLLECTOR_DATA_DIR=/srv/x\n",
                     "TR7_COLLECTOR_DATA_DIR='/var/lib/tr7-collector' \r\n"):
            env.write_text(original + line)  # the same directory, or a commented line: restarted
            calls.write_text("")
            out = chroot(root, "dpkg", "-i", f"/tmp/{debs['tr7-collector'].name}")
            assert "try-restart tr7-collector.service" in calls.read_text() and "NOT" not in out.stderr
    finally:
        env.write_text(original)
        fake.unlink()
        shutil.rmtree(root / "run/systemd")
        chroot(root, "dpkg", "-P", "tr7-collector")
