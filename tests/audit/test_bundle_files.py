"""verify reads only the regular files heartbeat-v1.md §6 names; anything else fails cleanly, exit 1."""

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from audit.verify import verify_bundle

ROOT = Path(__file__).resolve().parents[2]


def _limit_memory() -> None:
    # Reading /dev/zero would otherwise grow until the host runs out of memory.
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


def verify_cli(root: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`tr7-audit verify --quiet` in a child bounded in memory and time (a FIFO would block forever)."""
    return subprocess.run([sys.executable, "-m", "audit.cli", "verify", "--quiet", str(root)],
                          capture_output=True, text=True, timeout=timeout, check=False, cwd=ROOT,
                          preexec_fn=_limit_memory)


def _dir_symlink(bundle: Path, rel: str) -> None:
    elsewhere = bundle.parent / "elsewhere"
    elsewhere.mkdir()
    (bundle / rel).unlink()
    (bundle / rel).symlink_to(elsewhere)


def _dev_zero(bundle: Path, rel: str) -> None:
    (bundle / rel).unlink()
    (bundle / rel).symlink_to("/dev/zero")


def _fifo(bundle: Path, rel: str) -> None:
    (bundle / rel).unlink()
    os.mkfifo(bundle / rel)


@pytest.mark.parametrize(("rel", "make"), [("heartbeats.jws", _dir_symlink), ("catalog.json", _dev_zero),
                                           ("catalog.json", _fifo)], ids=["dir-symlink", "dev-zero", "fifo"])
def test_non_regular_file_is_a_finding_never_read(bundle: Path, rel: str, make) -> None:
    make(bundle, rel)
    res = verify_cli(bundle, timeout=60)
    assert "Traceback" not in res.stderr, res.stderr
    assert res.returncode == 1, res.stdout + res.stderr
    assert f"{rel}: manifest.format: not a regular file" in res.stdout


def test_content_behind_a_symlink_is_not_read(bundle: Path, tmp_path: Path, forge) -> None:
    """A symlink's target is no part of the bundle: an edited catalog behind one changes no verdict."""
    copy = tmp_path / "catalog-copy.json"
    copy.write_bytes((bundle / "catalog.json").read_bytes())
    forge.edit_json(tmp_path, copy.name, lambda c: c["rates"]["hourly"][0].update(price="0.0100"))
    (bundle / "catalog.json").unlink()
    (bundle / "catalog.json").symlink_to(copy)
    errors = {(f.file, f.rule) for f in verify_bundle(bundle).errors}
    assert errors == {("catalog.json", "manifest.format")}


def test_files_section_6_does_not_name_fail_even_when_listed(bundle: Path, forge) -> None:
    (bundle / "notes.txt").write_text("pay no attention\n")
    (bundle / "closed" / "old").mkdir()
    (bundle / "closed" / "old" / "invoice.json").write_text("{}\n")
    forge.rehash(bundle)
    forge.edit_json(bundle, "manifest.json", lambda m: m["files"].update({"../outside": "0" * 64}))
    report = verify_bundle(bundle)
    assert {(f.file, f.rule) for f in report.errors} == {
        ("notes.txt", "bundle.extra"), ("closed/old/invoice.json", "bundle.extra"),
        ("../outside", "bundle.extra")}


def test_manifest_listing_itself_is_an_extra_entry(bundle: Path, forge) -> None:
    forge.edit_json(bundle, "manifest.json", lambda m: m["files"].update({"manifest.json": "0" * 64}))
    assert {(f.file, f.rule) for f in verify_bundle(bundle).errors} == {("manifest.json", "bundle.extra")}


def test_symlinked_manifest_is_refused(bundle: Path, tmp_path: Path) -> None:
    outside = tmp_path / "manifest-copy.json"
    outside.write_bytes((bundle / "manifest.json").read_bytes())
    (bundle / "manifest.json").unlink()
    (bundle / "manifest.json").symlink_to(outside)
    res = verify_cli(bundle)
    assert res.returncode == 1, res.stdout + res.stderr
    assert res.stdout.startswith("manifest.json: manifest.format: not a regular file")


def test_directory_without_manifest_fails_with_exit_1(bundle: Path) -> None:
    """heartbeat-v1.md §6: "otherwise exit 1"; exit 2 is kept for command-line errors."""
    (bundle / "manifest.json").unlink()
    res = verify_cli(bundle)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "manifest.json: bundle.missing: " in res.stdout and "not an audit bundle" in res.stdout


def test_show_does_not_open_a_fifo(bundle: Path) -> None:
    _fifo(bundle, "usage.json")
    res = subprocess.run([sys.executable, "-m", "audit.cli", "show", str(bundle)], capture_output=True,
                         text=True, timeout=60, check=False, cwd=ROOT, preexec_fn=_limit_memory)
    assert res.returncode == 0 and "customers:" in res.stdout, res.stderr


DOCUMENTS = ["manifest.json", "agents.json", "catalog.json", "usage.json", "invoice.json"]


@pytest.mark.parametrize("rel", DOCUMENTS)
def test_a_json_document_with_a_repeated_member_is_refused(bundle: Path, forge, rel: str) -> None:
    """Whichever of two equal names a parser keeps, the bundle must say one thing: the last one
    winning let a forger show another value to a parser that keeps the first."""
    path = bundle / rel
    text = path.read_text()
    first = text.index('"', text.index("{")) if text.lstrip().startswith("{") else text.index('"')
    name = text[first: text.index('"', first + 1) + 1]
    path.write_text(text.replace("{", "{" + name + ": 0, ", 1))  # a copy of the object's first name
    if rel != "manifest.json":
        forge.rehash(bundle)
    res = verify_cli(bundle)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stdout + res.stderr
    assert f"{rel}: json.format: not valid UTF-8 JSON: not strict JSON: duplicate member name" in res.stdout


@pytest.mark.parametrize("rel", ["manifest.json", "catalog.json", "usage.json"])
def test_a_json_document_nested_too_deeply_is_a_named_finding(bundle: Path, forge, rel: str) -> None:
    (bundle / rel).write_text("[" * 100_000 + "]" * 100_000)
    if rel != "manifest.json":
        forge.rehash(bundle)
    res = verify_cli(bundle)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stdout + res.stderr
    assert f"{rel}: json.format: not valid UTF-8 JSON: not strict JSON: nested too deeply" in res.stdout


def test_show_counts_heartbeat_lines_without_reading_the_file_whole(tmp_path) -> None:
    """`tr7-audit show` read heartbeats.jws whole (twice its size in memory: 33 GB for a big
    month); it counts lines in pieces, a last line without LF counted as before."""
    from audit import bundle

    f = tmp_path / "h.jws"
    for data, lines in ((b"", 0), (b"a.b.c\n", 1), (b"a.b.c\nd.e.f", 2), (b"x\n" * 700_000, 700_000)):
        f.write_bytes(data)
        assert bundle.count_jws_lines(f) == lines
