"""The generated bundle verifies through the real console script; findings do not fail it."""

import json
from pathlib import Path

import pytest

from audit.bundle import BundleError
from audit.simulate import Scenario, make_bundle
from audit.verify import verify_bundle


def test_generated_bundle_verifies_via_function(pristine: Path, scenario: Scenario) -> None:
    report = verify_bundle(pristine)
    assert report.errors == [], [str(f) for f in report.errors]
    assert report.ok and report.lines == len(scenario.leaves)
    assert report.checkpoint is not None and report.checkpoint["size"] == len(scenario.leaves)


def test_gaps_and_forks_are_findings_with_exit_0(pristine: Path, scenario: Scenario, cli) -> None:
    res = cli("verify", str(pristine))
    assert res.returncode == 0, res.stdout + res.stderr
    (lo, hi), = scenario.expected["gaps"]["cloud-agent"]
    fork_seq, = scenario.expected["forks"]["lab-agent"]
    assert f"chain.gap: cloud-agent ({scenario.agent('cloud-agent').key.kid}): seq {lo}..{hi} missing" \
        in res.stdout
    fork_lines = [x for x in res.stdout.splitlines() if "chain.fork" in x]
    assert len(fork_lines) == 1 and f"seq {fork_seq} signed 2 times" in fork_lines[0]
    assert fork_lines[0].startswith("heartbeats.jws:")
    assert "OK" in res.stderr
    # Progress of the long stages goes to stderr, never into the report on stdout.
    assert f"heartbeats.jws: {len(scenario.leaves)}/{len(scenario.leaves)} lines (100%)" in res.stderr
    assert "recomputing billing" in res.stderr and "lines (" not in res.stdout
    # unpinned, the auditor is told what the bundle's own collector.pub cannot prove
    assert "collector.pub was not compared" in res.stderr
    key = (pristine / "collector.pub").read_text().strip()
    pinned = cli("verify", "--collector-key", key, str(pristine)).stderr
    assert "not compared" not in pinned
    # pinned or not, a verdict says what it takes as given (an auditor's review)
    assert "taken as given, signed by no one: agents.json (which keys count" in pinned


def test_json_report_names_findings_with_seqs(pristine: Path, scenario: Scenario, cli) -> None:
    res = cli("verify", str(pristine), "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["ok"] is True and doc["month"] == scenario.month and doc["provider"] == scenario.provider
    assert set(doc["unsigned"]) == {"agents.json", "catalog.json", "anchors.jws", "manifest.json"}
    assert {f["severity"] for f in doc["findings"]} == {"finding"}
    chains = {c["name"]: c for c in doc["chains"]}
    assert chains["cloud-agent"]["gaps"] == scenario.expected["gaps"]["cloud-agent"]
    assert chains["lab-agent"]["forks"] == scenario.expected["forks"]["lab-agent"]
    assert chains["dc1-agent"]["gaps"] == chains["dc1-agent"]["forks"] == chains["dc1-agent"]["breaks"] == []
    fork = next(f for f in doc["findings"] if f["rule"] == "chain.fork")
    assert fork["file"] == "heartbeats.jws" and isinstance(fork["line"], int)


def test_json_report_names_each_failure_with_file_line_and_rule(bundle: Path, forge, cli) -> None:
    """heartbeat-v1.md §6: each failure is named with its file, line and rule, in --json too."""
    forge.edit_lines(bundle, "heartbeats.jws", lambda ls: [*ls[:99], ls[99][:-4] + "AAAA", *ls[100:]])
    forge.rehash(bundle)
    res = cli("verify", str(bundle), "--json")
    assert res.returncode == 1, res.stderr
    errors = [f for f in json.loads(res.stdout)["findings"] if f["severity"] == "error"]
    named = {(f["file"], f["line"], f["rule"]) for f in errors}
    assert ("heartbeats.jws", 100, "signature") in named
    assert ("heartbeats.jws", None, "log.root") in named  # a whole-file rule has no line


def test_quiet_prints_nothing_on_success(pristine: Path, cli) -> None:
    res = cli("verify", "--quiet", str(pristine))
    assert res.returncode == 0 and res.stdout == "" and res.stderr == ""


def test_not_a_bundle_fails_and_a_missing_dir_is_a_usage_error(tmp_path: Path, cli) -> None:
    """heartbeat-v1.md §6: exit 1 when a check fails, a directory without manifest.json included;
    2 only for a command line that names no directory."""
    missing = cli("verify", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "neither a directory nor a bundle archive" in missing.stderr
    assert cli("show", str(tmp_path / "nowhere")).returncode == 2
    assert cli("verify").returncode == 2
    empty = cli("verify", str(tmp_path))
    assert empty.returncode == 1 and "manifest.json: bundle.missing: " in empty.stdout
    assert "not an audit bundle" in empty.stdout and "Traceback" not in empty.stderr
    shown = cli("show", str(tmp_path))
    assert shown.returncode == 1 and "not an audit bundle" in shown.stderr
    assert "exit status: 0 every check holds" in cli("verify", "--help").stdout


def test_version(cli) -> None:
    res = cli("--version")
    assert res.returncode == 0 and res.stdout.startswith("tr7-audit ")


def test_show_prints_per_customer_amounts(pristine: Path, scenario: Scenario, cli) -> None:
    res = cli("show", str(pristine))
    assert res.returncode == 0, res.stderr
    invoice = json.loads((pristine / "invoice.json").read_text())
    for cust, total in invoice["totals"].items():
        assert any(line.strip().startswith(f"{cust} ") and f"total {total} EUR" in line
                   for line in res.stdout.splitlines()), (cust, total, res.stdout)
    assert f"invoice total: {invoice['total']} EUR" in res.stdout
    assert "unlicensed TR7-X99" in res.stdout
    assert "lab-agent" in res.stdout and f"forks {scenario.expected['forks']['lab-agent']}" in res.stdout
    assert f"size {len(scenario.leaves)}" in res.stdout and "month closed" in res.stdout


def test_writer_is_deterministic_and_refuses_non_empty_dir(pristine: Path, scenario: Scenario,
                                                           tmp_path: Path) -> None:
    again = make_bundle(scenario, tmp_path / "again", close_at_size=len(scenario.leaves) - 40)
    for name in ("manifest.json", "heartbeats.jws", "checkpoint", "closed/invoice.json"):
        assert (again / name).read_bytes() == (pristine / name).read_bytes(), name
    with pytest.raises(BundleError, match="not empty"):
        make_bundle(scenario, again)
    make_bundle(scenario, again, overwrite=True)  # this time without closed/
    assert not (again / "closed" / "checkpoint").exists()
    assert verify_bundle(again).ok


def test_show_on_a_damaged_document_says_so(bundle: Path, cli) -> None:
    (bundle / "invoice.json").write_text('{"lines": [{"customer": "c1"}]}\n')
    res = cli("show", str(bundle))
    assert res.returncode == 1 and "malformed document" in res.stderr and "Traceback" not in res.stderr


def test_names_the_terminal_cannot_encode_are_escaped_not_a_traceback(bundle: Path, forge) -> None:
    """An auditor on Windows (cp1252) piping the report: a Japanese agent name is escaped."""
    import subprocess
    import sys

    from tests.audit.conftest import TR7_AUDIT

    forge.edit_json(bundle, "agents.json", lambda doc: [a.update(name=f"東京-{a['name']}") for a in doc])
    forge.rehash(bundle)
    env = {"PATH": str(Path(sys.executable).parent), "PYTHONIOENCODING": "cp1252"}
    r = subprocess.run([str(TR7_AUDIT), "verify", str(bundle)], capture_output=True, timeout=300, check=False,
                       env=env)
    out, err = r.stdout.decode("cp1252"), r.stderr.decode("cp1252")
    assert r.returncode == 0 and "Traceback" not in err and ": OK in" in err  # the whole report
    assert "chain.fork: \\u6771\\u4eac-lab-agent" in out and "chain.gap: \\u6771\\u4eac-cloud-agent" in out
