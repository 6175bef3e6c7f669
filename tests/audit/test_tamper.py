"""Each tampering makes `tr7-audit verify` fail, naming the file and the rule that catch it.

The forger edits files and then rewrites manifest.json (which anyone can), unless the test is
about the manifest itself; only the collector key holder can sign checkpoints.
"""

import base64
import json
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit.recompute import log_root
from audit.simulate import Scenario
from audit.verify import verify_bundle
from protocol.heartbeat import sign_heartbeat
from protocol.keys import kid_of
from protocol.note import Checkpoint, NoteSigner, sign_checkpoint


def failures(root: Path) -> set[tuple[str, str]]:
    report = verify_bundle(root)
    assert not report.ok
    return {(f.file, f.rule) for f in report.errors}


def lines_of(root: Path, rel: str = "heartbeats.jws") -> list[str]:
    return (root / rel).read_text().splitlines()


def payload(token: str, forge) -> dict:
    return json.loads(forge.unb64url(token.split(".")[1]))


def logged_and_signed(bundle: Path, forge, scenario: Scenario, leaves: list[str]) -> None:
    """What only the collector can do: log ``leaves`` and sign their checkpoint with its key."""
    (bundle / "heartbeats.jws").write_text("".join(x + "\n" for x in leaves))
    signer = NoteSigner(scenario.collector_name, scenario.collector_key)
    (bundle / "checkpoint").write_text(
        sign_checkpoint(Checkpoint(scenario.origin, len(leaves), log_root(leaves)), signer))
    forge.rehash(bundle)


def test_edited_observation_fails_its_signature(bundle: Path, forge, cli) -> None:
    lines = lines_of(bundle)
    k = next(i for i, t in enumerate(lines) if "stopped" in json.dumps(payload(t, forge)))
    h, _, s = lines[k].split(".")
    p = payload(lines[k], forge)
    for o in p["observations"]:
        o["state"] = "running"  # the billable lie
    lines[k] = f"{h}.{forge.b64url(json.dumps(p, separators=(',', ':')).encode())}.{s}"
    (bundle / "heartbeats.jws").write_text("".join(x + "\n" for x in lines))
    forge.rehash(bundle)
    res = cli("verify", str(bundle))
    assert res.returncode == 1
    assert f"heartbeats.jws:{k + 1}: signature: " in res.stdout
    assert "heartbeats.jws: log.root: " in res.stdout


def test_dropped_line(bundle: Path, forge) -> None:
    forge.edit_lines(bundle, "heartbeats.jws", lambda ls: ls[:500] + ls[501:])
    forge.rehash(bundle)
    assert {("heartbeats.jws", "log.size"), ("heartbeats.jws", "log.root")} <= failures(bundle)


def test_reordered_lines(bundle: Path, forge) -> None:
    forge.edit_lines(bundle, "heartbeats.jws", lambda ls: [ls[1], ls[0], *ls[2:]])
    forge.rehash(bundle)
    got = failures(bundle)
    assert ("heartbeats.jws", "log.root") in got and ("heartbeats.jws", "log.size") not in got


def test_swapped_key_in_agents_json(bundle: Path, forge, scenario: Scenario) -> None:
    other = scenario.agent("cloud-agent").key.public_b64
    forge.edit_json(bundle, "agents.json",
                    lambda rows: rows[0].update(public_key=other))  # keeps its kid
    forge.rehash(bundle)
    got = failures(bundle)
    assert ("agents.json", "agents.kid") in got and ("heartbeats.jws", "kid.unknown") in got


def test_checkpoint_signed_by_another_key(bundle: Path, forge, scenario: Scenario) -> None:
    impostor = NoteSigner(scenario.collector_name, Ed25519PrivateKey.generate())
    cp = Checkpoint(scenario.origin, len(scenario.leaves), log_root(scenario.leaves))
    (bundle / "checkpoint").write_text(sign_checkpoint(cp, impostor))
    forge.rehash(bundle)
    assert ("checkpoint", "checkpoint.signature") in failures(bundle)


def test_checkpoint_with_edited_root(bundle: Path, forge) -> None:
    text = (bundle / "checkpoint").read_text().split("\n")
    text[2] = forge.b64url(bytes(32)).replace("-", "+").replace("_", "/") + "="
    (bundle / "checkpoint").write_text("\n".join(text))
    forge.rehash(bundle)
    assert ("checkpoint", "checkpoint.signature") in failures(bundle)


def test_edited_invoice_amount(bundle: Path, forge, cli) -> None:
    forge.edit_json(bundle, "invoice.json", lambda inv: inv["lines"][0].update(amount="1.00"))
    forge.rehash(bundle)
    got = failures(bundle)
    assert ("invoice.json", "billing.invoice") in got and ("invoice.json", "invoice.arithmetic") in got
    res = cli("verify", "--quiet", str(bundle))
    assert res.returncode == 1 and res.stdout.startswith("invoice.json: ")


def test_edited_catalog_rate(bundle: Path, forge) -> None:
    forge.edit_json(bundle, "catalog.json", lambda c: c["rates"]["hourly"][0].update(price="0.0100"))
    forge.rehash(bundle)
    report = verify_bundle(bundle)
    bad = [f for f in report.errors if (f.file, f.rule) == ("invoice.json", "billing.invoice")]
    assert bad and "catalog.json" in bad[0].message and '"price":"0.0100"' in bad[0].message


def test_wrong_manifest_hash(bundle: Path, forge) -> None:
    forge.edit_json(bundle, "manifest.json", lambda m: m["files"].update({"agents.json": "0" * 64}))
    assert failures(bundle) == {("agents.json", "manifest.hash")}


def test_line_resigned_by_another_enrolled_key(bundle: Path, forge, scenario: Scenario) -> None:
    dc1, cloud = scenario.agent("dc1-agent"), scenario.agent("cloud-agent")
    lines = lines_of(bundle)
    k = max(i for i, t in enumerate(lines) if payload(t, forge)["agent"] == dc1.key.kid)
    p = payload(lines[k], forge)
    p["agent"] = cloud.key.kid  # a valid signature by an enrolled key, but not what was logged
    lines[k] = sign_heartbeat(cloud.key, p)
    (bundle / "heartbeats.jws").write_text("".join(x + "\n" for x in lines))
    forge.rehash(bundle)
    got = failures(bundle)
    assert ("heartbeats.jws", "log.root") in got
    assert ("heartbeats.jws", "signature") not in got


def test_closed_invoice_edited(bundle: Path, forge) -> None:
    forge.edit_json(bundle, "closed/invoice.json", lambda inv: inv["device_days"][0].update(months=1))
    forge.rehash(bundle)
    assert ("closed/invoice.json", "closed.invoice") in failures(bundle)


def test_closed_checkpoint_not_a_prefix_root(bundle: Path, forge, scenario: Scenario) -> None:
    """Even the collector itself cannot rewrite the log after close: the prefix roots disagree."""
    signer = NoteSigner(scenario.collector_name, scenario.collector_key)
    s = len(scenario.leaves) - 40
    rewritten = scenario.leaves[1:s + 1]  # same size, other history
    (bundle / "closed/checkpoint").write_text(
        sign_checkpoint(Checkpoint(scenario.origin, s, log_root(rewritten)), signer))
    forge.rehash(bundle)
    assert failures(bundle) == {("closed/checkpoint", "closed.root")}


def test_heartbeat_outside_enrolment_window(bundle: Path, forge, scenario: Scenario, cli) -> None:
    kid = scenario.agent("cloud-agent").key.kid
    forge.edit_json(bundle, "agents.json", lambda rows: next(r for r in rows if r["kid"] == kid).update(
        revoked_at="2026-10-30T00:00:00Z"))
    forge.rehash(bundle)
    assert ("heartbeats.jws", "key.window") in failures(bundle)
    res = cli("verify", str(bundle))
    window = [x for x in res.stdout.splitlines() if ": key.window: " in x]
    assert res.returncode == 1 and len(window) == 2 * 24 * 3600 // scenario.interval  # two days' worth


def test_extra_unlisted_file(bundle: Path, cli) -> None:
    (bundle / "closed" / "note.txt").write_text("pay no attention\n")
    res = cli("verify", str(bundle))
    assert res.returncode == 1 and "closed/note.txt: manifest.unlisted: " in res.stdout


def test_leaf_outside_the_month_even_if_collector_signed(bundle: Path, forge, scenario: Scenario) -> None:
    dc1 = scenario.agent("dc1-agent")
    late = sign_heartbeat(dc1.key, {"v": 1, "agent": dc1.key.kid, "seq": 99999, "prev": "a" * 64,
                                    "time": "2026-11-01T00:00:05Z", "interval": 600, "polls": [],
                                    "observations": []})
    leaves = [*scenario.leaves, late]
    logged_and_signed(bundle, forge, scenario, leaves)
    report = verify_bundle(bundle)
    got = [(f.file, f.line, f.rule) for f in report.errors]
    assert got == [("heartbeats.jws", len(leaves), "leaf.month")]


def test_edited_usage_hours(bundle: Path, forge) -> None:
    forge.edit_json(bundle, "usage.json", lambda u: u["rows"][0].update(active_hours=1))
    forge.rehash(bundle)
    assert failures(bundle) == {("usage.json", "billing.usage")}


def test_parallel_and_serial_verification_agree(bundle: Path, forge) -> None:
    forge.edit_lines(bundle, "heartbeats.jws", lambda ls: [*ls[:3000], ls[3000][:-4] + "AAAA", *ls[3001:]])
    forge.rehash(bundle)
    serial, parallel = verify_bundle(bundle, workers=1), verify_bundle(bundle, workers=2)
    assert serial.findings == parallel.findings and serial.chains == parallel.chains
    assert ("heartbeats.jws", 3001, "signature") in [(f.file, f.line, f.rule) for f in serial.errors]


def test_replaced_collector_key_is_caught_only_by_pinning(bundle: Path, pristine: Path, forge,
                                                          scenario: Scenario, cli) -> None:
    """A forger with a key of their own re-signs everything; the pinned published key exposes it."""
    published = NoteSigner(scenario.collector_name, scenario.collector_key).verifier_key()
    forger = NoteSigner(scenario.collector_name, Ed25519PrivateKey.generate())
    (bundle / "collector.pub").write_text(forger.verifier_key() + "\n")
    for rel, size in (("checkpoint", len(scenario.leaves)), ("closed/checkpoint", len(scenario.leaves) - 40)):
        cp = Checkpoint(scenario.origin, size, log_root(scenario.leaves[:size]))
        (bundle / rel).write_text(sign_checkpoint(cp, forger))
    forge.rehash(bundle)
    assert verify_bundle(bundle).ok  # self-consistent: the bundle alone cannot tell
    res = cli("verify", "--quiet", "--collector-key", published, str(bundle))
    assert res.returncode == 1 and res.stdout.startswith("collector.pub:1: collector.pinned: ")
    assert cli("verify", "--quiet", "--collector-key", published, str(pristine)).returncode == 0


def test_edited_anchor(bundle: Path, forge) -> None:
    def edit(lines: list[str]) -> list[str]:
        h, p, s = lines[0].split(".")
        body = json.loads(forge.unb64url(p))
        body["seq"] += 1
        return [f"{h}.{forge.b64url(json.dumps(body, separators=(',', ':')).encode())}.{s}", *lines[1:]]

    forge.edit_lines(bundle, "anchors.jws", edit)
    forge.rehash(bundle)
    assert ("anchors.jws", "signature") in failures(bundle)


def test_same_jws_logged_twice(bundle: Path, forge, scenario: Scenario) -> None:
    leaves = [*scenario.leaves, scenario.leaves[7]]
    logged_and_signed(bundle, forge, scenario, leaves)
    report = verify_bundle(bundle)
    got = [(f.file, f.line, f.rule) for f in report.errors]
    assert got == [("heartbeats.jws", len(leaves), "leaf.duplicate")]
    assert "line 8" in report.errors[0].message


def test_removed_document(bundle: Path, forge, cli) -> None:
    (bundle / "usage.json").unlink()
    res = cli("verify", str(bundle))
    assert res.returncode == 1 and "usage.json: manifest.missing: " in res.stdout
    forge.rehash(bundle)  # hiding the removal from the manifest does not help
    assert failures(bundle) == {("usage.json", "bundle.missing")}


def test_chunking_does_not_change_the_report(bundle: Path, forge, monkeypatch) -> None:
    """Lines are verified and tallied in chunks, split at closed/'s size: any chunking, same verdicts."""
    import audit.lines

    forge.edit_json(bundle, "closed/usage.json", lambda u: u["rows"][0].update(active_hours=1))
    forge.rehash(bundle)
    whole = verify_bundle(bundle, workers=1)
    monkeypatch.setattr(audit.lines, "CHUNK", 97)  # chunks that straddle closed/'s size
    for workers in (1, 2):
        chunked = verify_bundle(bundle, workers=workers)
        assert chunked.findings == whole.findings and chunked.chains == whole.chains
    assert ("closed/usage.json", "closed.usage") in {(f.file, f.rule) for f in whole.errors}


def test_repeated_quarantined_line_is_taken_back_every_time(bundle: Path, forge, scenario: Scenario) -> None:
    """A forked heartbeat logged twice counts for nothing, both copies: only the repetition fails."""
    fork = next(f for f in verify_bundle(bundle).findings if f.rule == "chain.fork")
    assert fork.line is not None
    leaves = [*scenario.leaves, scenario.leaves[fork.line - 1]]
    logged_and_signed(bundle, forge, scenario, leaves)
    report = verify_bundle(bundle)
    got = [(f.file, f.line, f.rule) for f in report.errors]
    assert got == [("heartbeats.jws", len(leaves), "leaf.duplicate")]


def test_garbage_documents_are_reported_not_crashed_on(bundle: Path, forge) -> None:
    for rel, junk in (("usage.json", "[]"), ("invoice.json", '"x"'), ("catalog.json", "{}"),
                      ("agents.json", '{"kid": 1}'), ("closed/invoice.json", "{"), ("anchors.jws", "\n\n"),
                      ("checkpoint", "\u00e9")):
        (bundle / rel).write_text(junk + "\n")
    forge.rehash(bundle)
    got = failures(bundle)
    for rel in ("usage.json", "invoice.json", "catalog.json", "agents.json", "closed/invoice.json",
                "anchors.jws", "checkpoint"):
        assert rel in {f for f, _ in got}, rel


def test_weak_agent_key_logged_by_a_careless_collector(bundle: Path, forge, scenario: Scenario, cli) -> None:
    # A collector that enrolled the identity point as a key, then logged a line that anyone could
    # have "signed" (R = identity, S = 0) and honestly signed its checkpoint: the evidence is worthless.
    weak = bytes([1]) + bytes(31)
    kid = kid_of(weak)
    agent = {"kid": kid, "public_key": base64.b64encode(weak).decode(), "name": "weak",
             "enrolled_at": "2026-09-01T00:00:00Z", "revoked_at": None}
    forge.edit_json(bundle, "agents.json", lambda rows: rows.append(agent))
    head = {"alg": "EdDSA", "kid": kid, "typ": "tr7-heartbeat+json"}
    body = {"v": 1, "agent": kid, "seq": 1, "prev": "0" * 64, "time": "2026-10-20T12:00:00Z",
            "interval": 600, "polls": [{"adapter": "a", "platform": "kvm", "ok": True, "error": None}],
            "observations": [{"instance": "TR7-0001", "adapter": "a", "vm": "u", "host": None,
                              "state": "running", "capacity": None}]}
    line = ".".join(forge.b64url(json.dumps(x, separators=(",", ":")).encode()) for x in (head, body))
    line += "." + forge.b64url(weak + bytes(32))
    leaves = [*scenario.leaves, line]
    logged_and_signed(bundle, forge, scenario, leaves)
    got = failures(bundle)
    assert ("agents.json", "agents.weak_key") in got and ("heartbeats.jws", "kid.unknown") in got
    res = cli("verify", str(bundle))
    assert res.returncode == 1 and f"agents.json: agents.weak_key: entry {len(scenario.agents)} (kid {kid})" \
        in res.stdout


def test_checkpoint_of_a_provider_whose_id_ends_like_ours(bundle: Path, forge, scenario: Scenario,
                                                          cli) -> None:
    """The collector's real checkpoints of provider "evil/acme" end in "/acme/<month>" too: heartbeat-v1.md
    §5's origin is exactly <collector origin>/<provider id>/<month>, the collector origin being the
    name of the key that signs."""
    other = f"{scenario.collector_name}/evil/{scenario.provider}/{scenario.month}"
    for rel, size in (("checkpoint", len(scenario.leaves)), ("closed/checkpoint", len(scenario.leaves) - 40)):
        cp = Checkpoint(other, size, log_root(scenario.leaves[:size]))
        (bundle / rel).write_text(sign_checkpoint(cp, scenario.signer))
    forge.rehash(bundle)
    assert failures(bundle) == {("checkpoint", "checkpoint.origin"), ("closed/checkpoint", "closed.origin")}
    res = cli("verify", "--quiet", "--collector-key", scenario.signer.verifier_key(), str(bundle))
    assert res.returncode == 1 and f"origin {other!r}: the log of provider 'evil/acme' at " in res.stdout


def test_checkpoint_origin_of_another_collector(bundle: Path, forge, scenario: Scenario) -> None:
    other = f"other.example/{scenario.provider}/{scenario.month}"
    cp = Checkpoint(other, len(scenario.leaves), log_root(scenario.leaves))
    (bundle / "checkpoint").write_text(sign_checkpoint(cp, scenario.signer))
    forge.rehash(bundle)
    # closed/checkpoint keeps the honest origin, so the two now differ as well.
    assert failures(bundle) == {("checkpoint", "checkpoint.origin"), ("closed/checkpoint", "closed.origin")}


def test_an_amount_that_overflows_is_a_named_failure(bundle: Path, forge, cli) -> None:
    """"1E+1000000" parses as a Decimal and overflows the sum (decimal.Overflow): verify died with
    a traceback, every other failure unreported and --json empty; show died too."""
    forge.edit_json(bundle, "invoice.json", lambda inv: inv["lines"][0].update(amount="1E+1000000"))
    forge.rehash(bundle)
    assert ("invoice.json", "invoice.format") in failures(bundle)
    res = cli("verify", "--json", str(bundle))
    assert res.returncode == 1 and not json.loads(res.stdout)["ok"]
    res = cli("show", str(bundle))
    assert res.returncode == 1 and "malformed document" in res.stderr and "Traceback" not in res.stderr


def test_a_checkpoint_size_of_5000_digits_is_a_named_failure(bundle: Path, forge, scenario: Scenario) -> None:
    """Python's int() refuses more than 4,300 digits with a ValueError, which the checkpoint's
    parser let through: a traceback, even with the collector's key pinned."""
    root = base64.b64encode(log_root(scenario.leaves)).decode()
    signer = NoteSigner(scenario.collector_name, scenario.collector_key)
    (bundle / "checkpoint").write_text(signer.sign(f"{scenario.origin}\n{'9' * 5000}\n{root}\n"))
    forge.rehash(bundle)
    report = verify_bundle(bundle)
    assert ("checkpoint", "checkpoint.signature") in {(f.file, f.rule) for f in report.errors}
    assert "verify.internal" not in {f.rule for f in report.errors}


def test_an_unforeseen_error_fails_the_bundle_by_name(bundle: Path, monkeypatch) -> None:
    """Whatever a check did not foresee fails the bundle as `verify.internal`, after the findings
    made before it, rather than a traceback (exit 1 all the same, but nothing named)."""
    from audit import verify

    def broken(*_args, **_kw):
        raise RuntimeError("a case no check foresaw")

    monkeypatch.setattr(verify.checks, "check_chains", broken)
    report = verify_bundle(bundle)
    assert not report.ok and report.lines > 0
    internal = [f for f in report.errors if f.rule == "verify.internal"]
    assert len(internal) == 1 and "a case no check foresaw" in internal[0].message


def test_emptied_anchors_are_a_finding(bundle: Path, pristine: Path, forge) -> None:
    """anchors.jws is signed by nothing in v1 (README): emptied, a break at the month's boundary
    goes unseen. Keys enrolled before the month that begin it past seq 1 with no anchor are named."""
    assert "chain.unanchored" not in {f.rule for f in verify_bundle(pristine).notes}
    (bundle / "anchors.jws").write_text("")
    forge.rehash(bundle)
    named = [f for f in verify_bundle(bundle).notes if f.rule == "chain.unanchored"]
    assert named and all(f.file == "anchors.jws" and "no heartbeat of the month before" in f.message
                         for f in named)


def test_a_second_anchor_of_a_key_is_refused_unless_it_is_a_copy_of_the_same_seq(
    bundle: Path, forge, scenario: Scenario
) -> None:
    # Every copy of a key's last seq of the month before is its anchor when that seq was forked
    # (rule 4 then checks no link to it); an anchor of another seq is no anchor at all.
    from protocol.heartbeat import parse_unverified
    from protocol.timefmt import format_time

    anchor = parse_unverified(scenario.anchors[0])
    agent = next(a for a in scenario.agents if a.key.kid == anchor.kid)

    def signed(seq: int, t: int) -> str:
        payload = {**anchor.payload, "seq": seq, "time": format_time(t), "observations": []}
        return sign_heartbeat(agent.key, payload)

    older = signed(anchor.seq - 1, anchor.time - 60)
    forge.edit_lines(bundle, "anchors.jws", lambda lines: [*lines, older])
    forge.rehash(bundle)
    found = [(f.file, f.rule, f.message) for f in verify_bundle(bundle).errors]
    why = f"second anchor for key {anchor.kid} (seq {anchor.seq - 1}, the first's is {anchor.seq})"
    assert ("anchors.jws", "anchor.duplicate", why) in found
