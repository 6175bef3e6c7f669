"""The live agent: configuration for the three simulators, enrolment, check, a few polls, status."""

import json
import time
from pathlib import Path
from typing import Any

from scripts.demo.catalog import PROVIDER
from scripts.demo.run import BIN, DemoError, Processes, Progress, cli, cli_full, tail, wait_until
from scripts.demo.sims import AWS_KEY, AWS_REGIONS, AWS_SECRET, Sims


def agent_env(demo: Path) -> dict[str, str]:
    # moto accepts any key; the shared files point into the demo dir so ~/.aws is never read.
    return {"AWS_ACCESS_KEY_ID": AWS_KEY, "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
            "AWS_CONFIG_FILE": str(demo / "aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(demo / "aws-creds"),
            "AWS_EC2_METADATA_DISABLED": "true", "TR7_LOG_TIME": "1"}


def write_config(demo: Path, sims: Sims, collector_url: str, interval: int) -> Path:
    regions = ", ".join(f'"{r}"' for r in AWS_REGIONS)
    text = f"""# Written by scripts/demo: one agent polling the three simulators.
[agent]
collector = "{collector_url}"
state_dir = "{demo / 'agent'}"
interval = {interval}
allow_short_interval = true
name = "demo-live-agent"

[[adapters]]
name = "kvm-demo"
platform = "kvm"
uri = "{sims.kvm_uri}"

[[adapters]]
name = "aws-demo"
platform = "aws"
regions = [{regions}]
endpoint_url = "{sims.moto_url}"
"""
    if sims.vcsim_url:
        text += f"""
[[adapters]]
name = "vc-demo"
platform = "vmware"
url = "{sims.vcsim_url}"
username = "tr7"
password_file = "{demo / 'credentials' / 'vc-password'}"
"""
    path = demo / "agent.toml"
    path.write_text(text)
    return path


def enrol(demo: Path, config: Path, data_dir: str, say: Progress) -> str:
    token = cli("tr7-collector", "agent", "token", "--data-dir", data_dir, "--provider", PROVIDER,
                "--ttl", "1h").strip()
    say.info(f"enrolment token issued for {PROVIDER} (single use, 1 h)")
    out = cli("tr7-agent", "enroll", "--config", str(config), "--token", token, env=agent_env(demo))
    say.info(out.strip() or "enrolled")
    record = json.loads((demo / "agent" / "enrollment.json").read_text())
    return str(record["kid"])


def check(demo: Path, config: Path, say: Progress) -> None:
    p = cli_full("tr7-agent", "check", "--config", str(config), env=agent_env(demo), timeout=120)
    say.info("$ .venv/bin/tr7-agent check --config " + str(config))
    say.info(p.stdout)
    if p.returncode != 0:
        raise DemoError(f"`tr7-agent check` exited {p.returncode} (an adapter failed)",
                        (p.stdout + p.stderr).strip())


def _shipped(demo: Path, config: Path) -> int:
    p = cli_full("tr7-agent", "status", "--config", str(config), "--json", env=agent_env(demo), timeout=60)
    if p.returncode != 0:
        return 0
    return int(json.loads(p.stdout).get("last_shipped_seq") or 0)


def run_polls(demo: Path, config: Path, interval: int, polls: int, procs: Processes, say: Progress) -> int:
    """`tr7-agent run` until `polls` heartbeats are shipped, then SIGTERM; returns the shipped count."""
    log = demo / "logs" / "agent.log"
    proc = procs.start("tr7-agent", [str(BIN / "tr7-agent"), "run", "--config", str(config)], log,
                       env=agent_env(demo))
    started = time.monotonic()
    say.info(f"tr7-agent run (pid {proc.pid}, log {log}); waiting for {polls} heartbeats "
             f"at a {interval} s interval")
    wait_until(f"{polls} heartbeats shipped", lambda: _shipped(demo, config) >= polls,
               interval * (polls + 2) + 60, proc, log)
    code = Processes.terminate(proc, grace=60)
    procs.procs = [p for p in procs.procs if p[1] is not proc]
    if code != 0:
        raise DemoError(f"tr7-agent run exited {code} after SIGTERM", tail(log))
    n = _shipped(demo, config)
    say.info(f"SIGTERM after {time.monotonic() - started:.0f} s: exit 0, {n} heartbeats shipped")
    return n


def status(demo: Path, config: Path, say: Progress) -> dict[str, Any]:
    out = cli("tr7-agent", "status", "--config", str(config), env=agent_env(demo))
    say.info("$ .venv/bin/tr7-agent status --config " + str(config))
    say.info(out)
    data: dict[str, Any] = json.loads(cli("tr7-agent", "status", "--config", str(config), "--json",
                                          env=agent_env(demo)))
    if data.get("rejected", {}).get("count"):
        raise DemoError("the collector rejected heartbeats of the live agent", json.dumps(data["rejected"]))
    return data
