"""Heartbeats the chain rules quarantine count for nothing in the recomputed billing, every copy of them."""

from pathlib import Path

import audit.lines
from audit.bundle import write_bundle
from audit.recompute import bill_lines, sign_log_checkpoint
from audit.simulate import Scenario
from audit.verify import verify_bundle
from protocol.heartbeat import ZERO_HASH, sign_heartbeat, token_digest
from protocol.keys import AgentKey
from protocol.timefmt import format_time, month_bounds

HOUR = 3600


def _beat(key: AgentKey, seq: int, prev: str, t: int) -> str:
    return sign_heartbeat(key, {
        "v": 1, "agent": key.kid, "seq": seq, "prev": prev, "time": format_time(t), "interval": HOUR,
        "polls": [{"adapter": "kvm", "platform": "kvm", "ok": True, "error": None}],
        "observations": [{"instance": "TR7-A01", "adapter": "kvm", "vm": "vm-1", "host": "h1",
                          "state": "running", "capacity": None}]})


def test_repeated_fork_copy_bills_nothing_for_its_hour(
    scenario: Scenario, tmp_path: Path, monkeypatch
) -> None:
    """Hour 2 is seen only by a forked seq; logging one copy twice must not bring the hour back."""
    m0, m1 = month_bounds(scenario.month)
    key = AgentKey.generate()
    leaves, prev = [], ZERO_HASH
    for seq in range(1, 7):
        leaves.append(_beat(key, seq, prev, m0 + (seq - 1) * HOUR + 60))
        prev = token_digest(leaves[-1])
    fork = _beat(key, 3, token_digest(leaves[1]), m0 + 2 * HOUR + 90)  # a restored snapshot re-signs seq 3
    leaves += [fork, fork]
    usage, invoice = bill_lines(leaves, [], scenario.catalog, scenario.month)
    assert {r["license"]: r["active_hours"] for r in usage["rows"]}["SL-A01"] == 5  # hour 2 quarantined
    signer = scenario.signer
    agent = {"kid": key.kid, "public_key": key.public_b64, "name": "solo",
             "enrolled_at": format_time(m0 - HOUR), "revoked_at": None}
    write_bundle(tmp_path / "b", provider=scenario.provider, month=scenario.month, leaves=leaves, anchors=[],
                 checkpoint=sign_log_checkpoint(signer, scenario.origin, leaves),
                 collector_vkey=signer.verifier_key(), agents=[agent], catalog=scenario.catalog,
                 usage=usage, invoice=invoice, created=format_time(m1))
    monkeypatch.setattr(audit.lines, "CHUNK", 3)  # the copies land in different chunks (and workers)
    for workers in (1, 2):
        report = verify_bundle(tmp_path / "b", workers=workers)
        assert [(f.file, f.line, f.rule) for f in report.errors] == [("heartbeats.jws", 8, "leaf.duplicate")]
        assert [(f.line, f.rule) for f in report.notes] == [(3, "chain.fork")]
