"""Bundles another collector may write within heartbeat-v1.md §6 and billing-v1.md: verified alike.

Each case is a form the specs leave open (a key name, a final LF, hex case, time forms, extra
members, a device-day row of no day, hard links in an auditor's own tar) and this collector does
not write; the checks that make evidence evidence must still hold around each."""

import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from audit.recompute import log_root
from audit.simulate import Scenario, make_bundle
from audit.verify import verify_bundle
from protocol.errors import ProtocolError
from protocol.note import Checkpoint, NoteSigner, sign_checkpoint
from protocol.timefmt import parse_rfc3339, parse_time, rfc3339_instant
from tests.audit.conftest import LATE, edit_json, rehash


def _resign(bundle: Path, scenario: Scenario, key_name: str, origin: str) -> None:
    """Both checkpoints signed by the collector's key under ``key_name`` with ``origin``."""
    leaves = (bundle / "heartbeats.jws").read_text().splitlines()
    signer = NoteSigner(key_name, scenario.collector_key)
    closed = len(leaves) - LATE
    whole = Checkpoint(origin, len(leaves), log_root(leaves))
    (bundle / "checkpoint").write_text(sign_checkpoint(whole, signer))
    (bundle / "closed" / "checkpoint").write_text(
        sign_checkpoint(Checkpoint(origin, closed, log_root(leaves[:closed])), signer))
    (bundle / "collector.pub").write_text(signer.verifier_key() + "\n")
    rehash(bundle)


def _rules(report: object) -> set[str]:
    return {f.rule for f in report.errors}  # type: ignore[attr-defined]


def test_a_key_not_named_after_the_origin_verifies_once_the_auditor_names_the_origin(
    bundle: Path, scenario: Scenario
) -> None:
    log = f"collector.example.net/{scenario.provider}/{scenario.month}"
    _resign(bundle, scenario, "tr7-collector", log)
    first = verify_bundle(bundle, workers=1)
    assert _rules(first) == {"checkpoint.origin", "closed.origin"}
    # says what to do, but not which origin: whoever made the bundle chose that
    why = str(first.errors[0]).split(":", 3)[3]
    assert "pass it with --origin" in why and "example.net" not in why
    assert verify_bundle(bundle, workers=1, origin="collector.example.net").ok
    assert _rules(verify_bundle(bundle, workers=1, origin="collector.example.org")) == {
        "checkpoint.origin", "closed.origin"}


def test_the_given_origin_still_tells_a_provider_from_one_whose_id_ends_in_it(
    bundle: Path, scenario: Scenario
) -> None:
    # the log of provider "evil/acme" at collector.example.net, handed over as acme's
    evil = f"collector.example.net/evil/{scenario.provider}/{scenario.month}"
    _resign(bundle, scenario, "tr7-collector", evil)
    assert "checkpoint.origin" in _rules(verify_bundle(bundle, workers=1, origin="collector.example.net"))


def test_a_key_named_after_the_whole_origin_line_needs_the_origin_named(bundle: Path,
                                                                        scenario: Scenario) -> None:
    log = f"collector.example.net/{scenario.provider}/{scenario.month}"
    _resign(bundle, scenario, log, log)  # C2SP tlog-checkpoint: the key name SHOULD be the origin
    assert verify_bundle(bundle, workers=1, origin="collector.example.net").ok
    # the key's name alone binds nothing: one named after another provider's log passed for any
    # (found by a review of this change)
    other = "collector.example.net/someone-else/2019-01"
    _resign(bundle, scenario, other, other)
    assert _rules(verify_bundle(bundle, workers=1)) == {"checkpoint.origin", "closed.origin"}


def test_a_last_line_without_its_lf_is_a_line(bundle: Path) -> None:
    path = bundle / "heartbeats.jws"
    path.write_bytes(path.read_bytes().rstrip(b"\n"))
    rehash(bundle)
    report = verify_bundle(bundle, workers=1)
    assert report.ok, [str(f) for f in report.errors]
    assert report.lines == len(path.read_text().splitlines())


def test_manifest_hashes_in_upper_case_hex(bundle: Path) -> None:
    edit_json(bundle, "manifest.json",
              lambda m: m.update(files={k: v.upper() for k, v in m["files"].items()}))
    assert verify_bundle(bundle, workers=1).ok
    (bundle / "usage.json").write_text((bundle / "usage.json").read_text() + " ")
    assert _rules(verify_bundle(bundle, workers=1)) == {"manifest.hash"}  # still compared


def test_agents_and_manifest_times_in_any_rfc3339_form_and_extra_agent_members(bundle: Path) -> None:
    def agents(rows: list) -> None:
        for r in rows:
            r["enrolled_at"] = r["enrolled_at"].replace("Z", "+00:00")
            r["platform"] = "kvm"  # a member §6 does not name: ignored

    path = bundle / "agents.json"
    rows = json.loads(path.read_text())
    agents(rows)
    path.write_text(json.dumps(rows))
    edit_json(bundle, "manifest.json", lambda m: m.update(created=m["created"].replace("Z", ".250Z")))
    rehash(bundle)
    report = verify_bundle(bundle, workers=1)
    assert report.ok, [str(f) for f in report.errors]
    # a leap second there is read too (a time-edge review: it failed agents.format and every line)
    rows[0]["enrolled_at"] = "2016-12-31T23:59:60Z"
    path.write_text(json.dumps(rows))
    edit_json(bundle, "manifest.json", lambda m: m.update(created="2016-12-31T23:59:60Z"))
    rehash(bundle)
    report = verify_bundle(bundle, workers=1)
    assert report.ok, [str(f) for f in report.errors]
    # a :60 where no leap second can be (not 23:59:60 UTC on a month's last day) names no instant
    edit_json(bundle, "manifest.json", lambda m: m.update(created="2016-12-31T12:59:60Z"))
    rehash(bundle)
    assert "manifest.format" in _rules(verify_bundle(bundle, workers=1))
    edit_json(bundle, "manifest.json", lambda m: m.update(created="2016-12-31T23:59:59Z"))
    rows[0].pop("name")  # a member §6 names is still required
    path.write_text(json.dumps(rows))
    rehash(bundle)
    assert "agents.format" in _rules(verify_bundle(bundle, workers=1))


def test_rfc3339_times_as_epoch_seconds() -> None:
    z = parse_time("2026-11-01T00:00:00Z")
    assert parse_rfc3339("2026-11-01T00:00:00Z") == z
    assert parse_rfc3339("2026-11-01T01:30:00+01:30") == z
    assert parse_rfc3339("2026-10-31t23:00:00-01:00") == z
    # a window's start at a fraction: the first whole second inside it
    assert parse_rfc3339("2026-11-01T00:00:00.25z", round_up=True) == z + 1
    assert parse_rfc3339("2026-11-01T00:00:00.000Z", round_up=True) == z
    assert parse_rfc3339("2026-11-01T00:00:00.75Z") == z
    assert rfc3339_instant("2026-11-01T00:00:00.1Z") < rfc3339_instant("2026-11-01T01:00:00.9+01:00")
    # a leap second (RFC 3339 §5.7; POSIX time has no second for it): the last instant of the one
    # before, so a window starting then starts at the next second and one ending then holds :59
    assert parse_rfc3339("2016-12-31T23:59:60Z") == parse_time("2016-12-31T23:59:59Z")
    assert parse_rfc3339("2016-12-31T23:59:60.5Z", round_up=True) == parse_time("2017-01-01T00:00:00Z")
    assert parse_rfc3339("2017-01-01T00:59:60+01:00", round_up=True) == parse_time("2017-01-01T00:00:00Z")
    assert (rfc3339_instant("2016-12-31T23:59:59.9Z") < rfc3339_instant("2016-12-31T23:59:60Z")
            < rfc3339_instant("2017-01-01T00:00:00Z"))
    assert parse_rfc3339("2015-06-30T23:59:60Z") == parse_time("2015-06-30T23:59:59Z")
    assert parse_rfc3339("9999-12-31T23:59:60Z") == parse_time("9999-12-31T23:59:59Z")  # no year 10000
    assert parse_rfc3339("9999-12-31T22:59:60-01:00") == parse_time("9999-12-31T23:59:59Z")
    for bad in ("2026-11-01T00:00:60Z", "2016-12-30T23:59:60Z", "2016-12-31T23:58:60Z",
                "2016-12-31T23:59:60+01:00", "2026-11-01T00:00:61Z", "2026-11-01 00:00:00Z",
                "2026-11-01T00:00:00", "2026-02-30T00:00:00Z",
                "2026-11-01T00:00:00+24:00", "2026-11-01T00:00:00.Z", 1_790_000_000):
        with pytest.raises(ProtocolError):
            parse_rfc3339(bad)  # type: ignore[arg-type]


def test_a_device_day_row_of_no_day_is_the_same_as_none(bundle: Path) -> None:
    row = {"customer": "c1", "pack": "starter", "device_days": 0, "months": 0, "price": "5.00",
           "amount": "0.00"}
    edit_json(bundle, "invoice.json", lambda inv: inv["device_days"].append(row))
    rehash(bundle)
    report = verify_bundle(bundle, workers=1)
    assert report.ok, [str(f) for f in report.errors]
    # one that bills something is no such row: its amount fails the arithmetic and the recomputation
    edit_json(bundle, "invoice.json", lambda inv: inv["device_days"][-1].update(amount="5.00"))
    rehash(bundle)
    assert {"invoice.arithmetic", "billing.invoice"} <= _rules(verify_bundle(bundle, workers=1))


def test_an_auditors_tar_of_a_bundle_with_hard_links_verifies(scenario: Scenario, cli: object,
                                                            tmp_path: Path) -> None:
    bundle = make_bundle(scenario, tmp_path / "b", close_at_size=len(scenario.leaves))  # frozen == current
    for rel in ("usage.json", "invoice.json"):  # closed/ copies stored once: the same bytes
        frozen = bundle / "closed" / rel
        assert frozen.read_bytes() == (bundle / rel).read_bytes()
        frozen.unlink()
        os.link(bundle / rel, frozen)
    archive = tmp_path / "bundle.tar.gz"
    subprocess.run(["tar", "-czf", str(archive), "-C", str(tmp_path), "b"], check=True)
    with tarfile.open(archive) as tar:
        assert sum(m.islnk() for m in tar) == 2  # GNU tar wrote the second names as hard links
    got = cli("verify", "--quiet", str(archive))  # type: ignore[operator]
    assert got.returncode == 0, got.stdout + got.stderr

    # a hard link to a name the archive did not give before it is refused, never followed
    bad = tmp_path / "bad.tar.gz"
    with tarfile.open(archive) as src, tarfile.open(bad, "w:gz") as out:
        for m in src:
            if m.islnk():
                m.linkname = "b/../../etc/passwd" if m.name.endswith("usage.json") else "b/nothing"
            out.addfile(m, src.extractfile(m) if m.isfile() else None)
    got = cli("verify", "--quiet", str(bad))  # type: ignore[operator]
    assert got.returncode == 1 and "archive.unreadable" in got.stdout and "links to" in got.stdout


def test_a_revocation_before_the_enrolment_within_one_second_is_refused(bundle: Path) -> None:
    """Found by a review of the RFC 3339 reading: .1 s before .9 s of the same second passed."""
    path = bundle / "agents.json"
    rows = json.loads(path.read_text())
    at = rows[0]["enrolled_at"]
    rows[0]["enrolled_at"], rows[0]["revoked_at"] = at.replace("Z", ".9Z"), at.replace("Z", ".1Z")
    path.write_text(json.dumps(rows))
    rehash(bundle)
    assert "agents.format" in _rules(verify_bundle(bundle, workers=1))
