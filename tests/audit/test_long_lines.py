"""Lines and documents bigger than a bundle holds: lines hashed in pieces and reported, documents refused."""

from pathlib import Path
from typing import Any

import pytest

import audit.lines
from audit.lines import verify_lines
from audit.verify import verify_bundle
from protocol.merkle import leaf_hash, root_hash


@pytest.fixture
def small_bounds(monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(audit.lines, "MAX_LINE", 5000)
    monkeypatch.setattr(audit.lines, "_BLOCK", 1024)  # lines straddle the blocks read
    monkeypatch.setattr(audit.lines, "CHUNK", 3)  # and the chunks
    return 5000


@pytest.mark.parametrize("final_lf", [True, False])
def test_every_line_is_hashed_as_written_and_only_the_long_ones_are_reported(
        tmp_path: Path, small_bounds: int, final_lf: bool) -> None:
    lines = [b"eyJ.short.one", b"A" * (small_bounds + 1), b"", b"B" * small_bounds, b"x.y.z",
             b"C" * 12_345, b"D" * 7000, b"tail"]
    if not final_lf:
        lines[-1] = b"E" * 9000  # an overlong last line without its LF
    path = tmp_path / "heartbeats.jws"
    path.write_bytes(b"\n".join(lines) + (b"\n" if final_lf else b""))
    found: list[Any] = []
    res = verify_lines(lambda *a, **k: found.append(a), "heartbeats.jws", path, {}, "2026-10", None, 1)
    assert res.count == len(lines)
    assert res.root == root_hash([leaf_hash(x) for x in lines])
    long = [i + 1 for i, x in enumerate(lines) if len(x) > small_bounds]
    assert [ln for _f, ln, rule, msg in res.findings if "longer than any heartbeat" in msg] == long
    assert all(rule == "jws.format" for _f, ln, rule, _m in res.findings if ln in long)
    assert not found  # a last line without its LF is a line like the others (test_interop.py)


def test_a_bundle_with_an_overlong_line_fails_by_name(bundle: Path, forge: Any, small_bounds: int) -> None:
    forge.edit_lines(bundle, "heartbeats.jws", lambda ls: [*ls[:10], "A" * 20_000, *ls[10:]])
    forge.rehash(bundle)
    report = verify_bundle(bundle, workers=1)
    got = {(f.file, f.line, f.rule) for f in report.errors}
    # the line is named, and the log it is in is not the one the checkpoint signs
    assert {("heartbeats.jws", 11, "jws.format"), ("heartbeats.jws", None, "log.size"),
            ("heartbeats.jws", None, "log.root")} <= got


def test_a_document_bigger_than_any_bundles_is_refused_unread(bundle: Path, forge: Any,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import audit.bundle

    monkeypatch.setattr(audit.bundle, "MAX_DOCUMENT", 100_000)
    (bundle / "catalog.json").write_bytes(b" " * 100_001 + (bundle / "catalog.json").read_bytes())
    forge.rehash(bundle)
    report = verify_bundle(bundle, workers=1)
    named = [f for f in report.errors if f.file == "catalog.json" and f.rule == "file.unreadable"]
    assert named and "more than any document of a bundle (100000 bytes): not read" in named[0].message


def _killed_at_its_second_chunk(job: Any) -> Any:
    import os
    import signal

    if job[0] > 0:
        os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer would
    return audit.lines._REAL_CHUNK(job)


def test_a_signature_worker_that_dies_fails_the_lines_instead_of_hanging(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """multiprocessing.Pool.imap waited for a killed worker's chunk for ever: `verify` hung (a
    review sent SIGKILL to a worker of a 133k-line bundle). The workers are forked, so they run
    the stand-in set here."""
    import multiprocessing

    if multiprocessing.get_start_method() != "fork":
        pytest.fail("this test relies on forked workers (Linux's default)")
    monkeypatch.setattr(audit.lines, "CHUNK", 3)
    monkeypatch.setattr(audit.lines, "_REAL_CHUNK", audit.lines._verify_chunk, raising=False)
    monkeypatch.setattr(audit.lines, "_verify_chunk", _killed_at_its_second_chunk)
    path = tmp_path / "heartbeats.jws"
    path.write_bytes(b"x.y.z\n" * 12)
    with pytest.raises(audit.lines.VerifyAborted, match=r"a signature worker of heartbeats\.jws died"):
        verify_lines(lambda *a, **k: None, "heartbeats.jws", path, {}, "2026-10", None, 2)


def test_junk_lines_cost_no_memory_and_their_findings_are_counted_past_a_hundred(tmp_path: Path) -> None:
    """10 million empty lines (a 14 kB archive) were 10 million findings and leaf hashes kept,
    4.5 GB and a line of output each (an auditor's review). Bad lines now leave their hash in the
    roots and at most FINDINGS_PER_RULE findings a rule, then one that counts the rest."""
    import tracemalloc

    n = 300_000
    path = tmp_path / "heartbeats.jws"
    path.write_bytes(b"\n" * n)
    tracemalloc.start()
    try:
        res = verify_lines(lambda *a, **k: None, "heartbeats.jws", path, {}, "2026-10", None, 1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert res.count == n and res.root == root_hash([leaf_hash(b"")] * n)
    listed = [f for f in res.findings if f[1] is not None]
    assert len(listed) == audit.lines.FINDINGS_PER_RULE and listed[0][1] == 1
    cap = audit.lines.FINDINGS_PER_RULE
    assert res.findings[-1] == ("heartbeats.jws", None, "jws.format",
                                f"{n - cap:,} more lines fail jws.format; the first {cap:,} are listed")
    assert peak < 16 * 1024 * 1024, peak  # was ~140 MB (465 bytes a line)


def test_a_chunk_ends_past_its_byte_bound_as_well_as_its_line_count(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Lines under MAX_LINE were read 2,000 at a time whatever their size: 500 lines of 4 MiB (a
    2 MB archive) took 4.1 GB (an auditor's review)."""
    monkeypatch.setattr(audit.lines, "CHUNK_BYTES", 10_000)
    sizes = [3000, 3000, 3000, 3000, 12_000, 10, 10, 5000, 5000, 7]
    path = tmp_path / "heartbeats.jws"
    path.write_bytes(b"".join(b"x" * k + b"\n" for k in sizes))
    jobs, n = audit.lines._scan(path, split=7)
    assert n == len(sizes)
    assert [(first, count) for first, _o, _e, count, _l in jobs] == [(0, 4), (4, 1), (5, 2), (7, 2), (9, 1)]
    # a chunk ends with the line that takes it to the bound (at most the bound and one line)
    for first, offset, end, count, _long in jobs:
        assert end - offset - (sizes[first + count - 1] + 1) < 10_000
    res = verify_lines(lambda *a, **k: None, "heartbeats.jws", path, {}, "2026-10", None, 1, split=7)
    assert res.root == root_hash([leaf_hash(b"x" * k) for k in sizes])
    assert res.split_root == root_hash([leaf_hash(b"x" * k) for k in sizes[:7]])
