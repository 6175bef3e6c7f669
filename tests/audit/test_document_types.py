"""A bundle's documents of the wrong JSON type, and its text in the report, never pass unchecked.

Found by an adversarial review: a manifest.json or catalog.json of `null` read as "absent,
already reported", so verify checked nothing (or no billing) and said OK.
"""

import json
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest

from audit.simulate import Scenario
from audit.verify import verify_bundle
from protocol.heartbeat import sign_heartbeat


def errors(root: Path) -> set[tuple[str, str]]:
    report = verify_bundle(root)
    assert not report.ok
    return {(f.file, f.rule) for f in report.errors}


@pytest.mark.parametrize("text", ["null", " null\n", "0", '"x"', "[]"])
def test_a_manifest_that_is_no_object_still_checks_every_file(bundle: Path, text: str) -> None:
    (bundle / "heartbeats.jws").write_text("not a JWS\n")
    (bundle / "manifest.json").write_text(text)
    got = errors(bundle)
    assert ("manifest.json", "manifest.format") in got
    assert ("heartbeats.jws", "jws.format") in got  # the files were still read


@pytest.mark.parametrize("text", ["null", "[]", "3", '"catalog"'])
def test_a_catalog_that_is_no_object_fails_and_is_named(bundle: Path, forge, text: str) -> None:
    (bundle / "catalog.json").write_text(text)
    forge.rehash(bundle)
    got = errors(bundle)
    assert ("catalog.json", "catalog.invalid") in got


def _pad(inv: dict) -> None:
    """Double the first line's hours, with its amount and the totals kept consistent."""
    line = inv["lines"][0]
    old = Decimal(line["amount"])
    line["quantity"] *= 2
    line["amount"] = str((line["quantity"] * Decimal(line["price"])).quantize(Decimal("0.01"), ROUND_HALF_UP))
    more = Decimal(line["amount"]) - old
    inv["totals"][line["customer"]] = str(Decimal(inv["totals"][line["customer"]]) + more)
    inv["total"] = str(Decimal(inv["total"]) + more)


def test_a_null_catalog_cannot_hide_a_padded_invoice(bundle: Path, forge) -> None:
    """Only the recomputation from the catalog sees a consistent padding: with catalog.json null,
    verify said OK."""
    forge.edit_json(bundle, "invoice.json", _pad)
    forge.rehash(bundle)
    assert errors(bundle) == {("invoice.json", "billing.invoice")}  # the padding is consistent
    (bundle / "catalog.json").write_text("null")
    forge.rehash(bundle)
    report = verify_bundle(bundle)
    assert not report.ok
    named = [f.message for f in report.errors if f.file == "catalog.json"]
    assert named == ["must be a JSON object, not null"]


def test_null_agents_are_named_not_read_as_no_agents(bundle: Path, forge) -> None:
    (bundle / "agents.json").write_text("null")
    forge.rehash(bundle)
    assert ("agents.json", "agents.format") in errors(bundle)


def test_an_agent_name_that_is_no_string_fails(bundle: Path, forge) -> None:
    forge.edit_json(bundle, "agents.json", lambda rows: rows[0].update(name={"x": 1}))
    forge.rehash(bundle)
    assert ("agents.json", "agents.format") in errors(bundle)


@pytest.mark.parametrize("value", [[], [0, [5, 4, 0], -2], 5.4, None, True])
def test_money_that_is_no_string_is_a_named_failure_and_checks_go_on(bundle: Path, forge, value) -> None:
    """Decimal([]) raised ValueError past the checks (verify.internal, the closed/ checks skipped);
    Decimal([0,[5,4,0],-2]) read an array as 5.40."""
    forge.edit_json(bundle, "invoice.json", lambda inv: inv.update(total=value))
    forge.edit_json(bundle, "closed/invoice.json", lambda inv: inv["lines"][0].update(
        quantity=inv["lines"][0]["quantity"] + 1))
    forge.rehash(bundle)
    got = errors(bundle)
    assert ("invoice.json", "invoice.format") in got
    assert ("closed/invoice.json", "closed.invoice") in got  # the later checks still ran
    assert "verify.internal" not in {rule for _, rule in got}


def test_a_quantity_must_be_an_integer(bundle: Path, forge) -> None:
    forge.edit_json(bundle, "invoice.json", lambda inv: inv["lines"][0].update(
        quantity=str(inv["lines"][0]["quantity"])))
    forge.rehash(bundle)
    assert ("invoice.json", "invoice.format") in errors(bundle)


def test_an_anchor_older_than_the_month_before_is_refused(bundle: Path, forge, scenario: Scenario) -> None:
    """§6: anchors are each key's last accepted heartbeat "of the month before" (2026-09 here)."""
    dc1 = scenario.agent("dc1-agent")

    def older(lines: list[str]) -> list[str]:
        out = []
        for line in lines:
            p = json.loads(forge.unb64url(line.split(".")[1]))
            if p["agent"] == dc1.key.kid:
                p["time"] = "2026-08-30T23:40:03Z"
                line = sign_heartbeat(dc1.key, p)
            out.append(line)
        return out

    forge.edit_lines(bundle, "anchors.jws", older)
    forge.rehash(bundle)
    report = verify_bundle(bundle)
    bad = [f for f in report.errors if (f.file, f.rule) == ("anchors.jws", "anchor.month")]
    assert len(bad) == 1 and "month before" in bad[0].message


def test_control_characters_from_the_bundle_are_escaped_in_the_report(bundle: Path, forge, cli) -> None:
    """An agent's name is unsigned text: a terminal sequence in it could erase the failures above
    it and print a false OK. --json keeps the text as it is (JSON escapes it)."""
    trick = "\x1b[1A\x1b[2K\r\x1b[2Kall good: OK\x1b[8m\x9b"
    forge.edit_json(bundle, "agents.json", lambda rows: [r.update(name=r["name"] + trick) for r in rows])
    forge.edit_json(bundle, "invoice.json", lambda inv: inv["lines"][0].update(amount="1.00"))
    forge.rehash(bundle)
    res = cli("verify", str(bundle))
    assert res.returncode == 1
    assert "\x1b" not in res.stdout + res.stderr and "\x9b" not in res.stdout
    assert "\\x1b[1A" in res.stdout  # shown, not obeyed
    shown = cli("show", str(bundle))
    assert shown.returncode == 0 and "\x1b" not in shown.stdout
    report = json.loads(cli("verify", "--json", str(bundle)).stdout)
    assert any(trick in f["message"] for f in report["findings"])


@pytest.mark.parametrize("key", ["garbage", "", "tr7+00000000+AAAA"])
def test_a_malformed_pinned_key_is_a_usage_error(pristine: Path, cli, key: str) -> None:
    for args in (["verify", "--collector-key", key, str(pristine)],
                 ["handover", "--collector-key", key, str(pristine / "checkpoint")]):
        res = cli(*args)
        assert res.returncode == 2, args
        assert "argument --collector-key: not a note verifier key" in res.stderr


def test_a_pinned_key_with_spaces_around_it_is_the_key(pristine: Path, cli) -> None:
    published = (pristine / "collector.pub").read_text().strip()
    assert cli("verify", "--quiet", "--collector-key", f" {published}\n", str(pristine)).returncode == 0


@pytest.mark.parametrize("month", ["0001-01", "9999-12", "2026-13"])
def test_a_manifest_month_without_a_month_before_is_named(bundle: Path, month: str) -> None:
    """0001-01 has no month before for its anchors: it ended in verify.internal (a review)."""
    doc = json.loads((bundle / "manifest.json").read_text())
    doc["month"] = month
    (bundle / "manifest.json").write_text(json.dumps(doc))
    got = errors(bundle)
    assert ("manifest.json", "manifest.format") in got and ("(verifier)", "verify.internal") not in got


def test_characters_that_reorder_or_split_a_line_are_escaped_too() -> None:
    """A right-to-left override (U+202E), an isolate (U+2066) or a line separator (U+2028) in an
    agent's name reordered or split a finding in the terminal (a review); letters stay as they are."""
    from audit.checks import printable

    shown = printable("dc\u202eevil\u2066x\u2028y\u200bz\U000e0041 é 日本\x1b")
    assert shown == "dc\\u202eevil\\u2066x\\u2028y\\u200bz\\U000e0041 é 日本\\x1b"  # a tag character too
