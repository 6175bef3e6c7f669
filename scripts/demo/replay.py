"""Replay a simulated previous month (audit.simulate) through the collector's HTTP ingest."""

import gzip
from collections import Counter
from typing import Any

import httpx

from audit.simulate import Scenario, build_scenario
from protocol.heartbeat import parse_unverified
from protocol.timefmt import format_time, month_bounds
from scripts.demo.catalog import PROVIDER
from scripts.demo.run import DemoError, cli

BATCH = 5000  # the collector's limit of lines per request


def scenario(month: str) -> Scenario:
    """The simulated month: three agents (vSphere, KVM + Proxmox, AWS), a gap, a fork, over-use."""
    return build_scenario(month=month)


def enrol(sc: Scenario, data_dir: str) -> list[tuple[str, str]]:
    """Register each simulated agent's public key with the demo provider, at its enrolment time."""
    out = []
    for agent in sc.agents:
        kid = cli("tr7-collector", "agent", "add", "--data-dir", data_dir, "--provider", PROVIDER,
                  "--name", f"demo-replay-{agent.name}", "--public-key", agent.key.public_b64,
                  "--enrolled-at", format_time(agent.enrolled_at)).strip()
        if kid != agent.key.kid:
            raise DemoError(f"collector answered kid {kid!r} for {agent.name}, expected {agent.key.kid}")
        out.append((f"demo-replay-{agent.name}", kid))
    return out


def split_late(sc: Scenario, agent: str = "dc1-agent", hours: int = 6) -> tuple[list[str], list[str]]:
    """(on time, late): one agent's heartbeats of the month's last hours arrive after the close.

    That agent's uplink was down at month-end; its spool delivers them once the month is closed,
    so they become adjustment lines on the current month's invoice (billing-v1.md §6).
    """
    kid = sc.agent(agent).key.kid
    cut = month_bounds(sc.month)[1] - hours * 3600
    on_time, late = [], []
    for tok in [*sc.anchors, *sc.leaves]:
        hb = parse_unverified(tok)
        (late if hb.kid == kid and hb.time >= cut and tok not in sc.anchors else on_time).append(tok)
    return on_time, late


def send(lines: list[str], collector_url: str) -> Counter[str]:
    """POST the lines in batches of the collector's maximum; any rejected line fails the demo."""
    counts: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    with httpx.Client(base_url=collector_url, timeout=120) as client:
        for i in range(0, len(lines), BATCH):
            body = gzip.compress(("\n".join(lines[i:i + BATCH]) + "\n").encode("ascii"))
            resp = client.post("/v1/heartbeats", content=body, headers={
                "Content-Type": "text/plain; charset=us-ascii", "Content-Encoding": "gzip"})
            if resp.status_code != 200:
                raise DemoError(f"POST /v1/heartbeats answered HTTP {resp.status_code}", resp.text[:2000])
            results: list[dict[str, Any]] = resp.json()["results"]
            for r in results:
                counts[r["status"]] += 1
                if r["status"] == "rejected":
                    reasons[r.get("reason", "?")] += 1
    if counts["rejected"]:
        raise DemoError(f"{counts['rejected']} simulated heartbeats rejected",
                        "\n".join(f"{n} x {why}" for why, n in reasons.most_common(10)))
    return counts
