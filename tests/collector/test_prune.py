"""`tr7-collector prune`: a closed month's bundle archived and verified, then its evidence dropped.

What a provider relies on afterwards: the archive verifies as `tr7-audit verify` would; the
month's bill, checkpoints and aggregates are unchanged, and so is its bill recomputed from the
aggregates (which takes quarantined heartbeats back from their JWS); the next month still exports
a bundle that verifies (its anchors); a retry is still a duplicate, a new line of the month is
refused by name; what needs the JWS (export, amend, the web's bundle) says where the archive is.
"""

import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from audit.verify import verify_bundle
from collector import accounting, billcache, db, prune, registry, tlog
from collector import schema as s
from collector.amend import amend_closed
from collector.custody import keep_cutoff
from collector.export import export, staging
from collector.ingest import ingest_lines
from protocol.timefmt import month_of, next_month, parse_time

SEP, OCT = "2026-09", "2026-10"  # both ended
T0 = parse_time("2026-09-01T00:00:00Z")


def _cli(settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "collector.cli", *args, "--data-dir", str(settings.data_dir),
                           "--db", settings.db_url], capture_output=True, text=True, check=False)


def _month_with_a_fork(settings, tools) -> dict:
    """September: agent a polls hourly for 2 days, with a fork on day 2 at 05:00 (its host
    restored from a snapshot); agent b twice. October: both go on. September is closed."""
    db.write_tx(settings.engine, lambda c: registry.apply_catalog(c, tools.catalog()))
    a, b = tools.Agent("a"), tools.Agent("b")
    for ag in (a, b):
        tools.enrol(settings, "acme", ag, parse_time("2026-08-01T00:00:00Z"))
    lines = [a.beat(T0 + h * 3600 + 60, {"TR7-0001": "running"}) for h in range(29)]
    seq, prev = a.seq, a.prev
    lines.append(a.beat(T0 + 29 * 3600 + 60, {"TR7-0001": "running"}))
    a.seq, a.prev = seq, prev  # the same seq signed again, other content: a fork
    lines.append(a.beat(T0 + 29 * 3600 + 120, {"TR7-0001": "stopped"}))
    lines += [a.beat(T0 + h * 3600 + 60, {"TR7-0001": "running"}) for h in range(30, 48)]
    lines += [b.beat(T0 + h * 3600 + 90, {"TR7-0002": "running"}) for h in (3, 40)]
    o0 = parse_time("2026-10-01T00:00:00Z")
    lines += [a.beat(o0 + 60, {"TR7-0001": "running"}), b.beat(o0 + 90, {"TR7-0002": "running"})]
    assert {r["status"] for r in ingest_lines(settings.engine, lines)} == {"accepted"}
    db.write_tx(settings.engine, lambda c: accounting.close(c, settings, "acme", SEP))
    return {"a": a, "b": b, "lines": lines}


def _fresh_result(settings, month: str) -> tuple[dict, dict]:
    billcache.clear()  # computed again from the aggregates, not remembered from before
    with db.read_conn(settings.engine) as c:
        return accounting.own_result(c, "acme", month)


def _jws_left(settings) -> set[int]:
    L = s.leaves.c
    with db.read_conn(settings.engine) as c:
        rows = c.execute(sa.select(L.idx, L.jws).where(L.provider == "acme", L.month == SEP))
        return {int(r.idx) for r in rows if r.jws != ""}


def test_a_pruned_month_keeps_its_bill_and_proofs_and_its_archive_verifies(settings, tools, tmp_path) -> None:
    w = _month_with_a_fork(settings, tools)
    before = _fresh_result(settings, SEP)
    chains = {ch["agent"]: ch for ch in before[0]["chains"]}
    assert chains[w["a"].kid]["forks"] == [30]  # both copies quarantined: billed without them
    with db.read_conn(settings.engine) as c:
        size = tlog.log_size(c, "acme", SEP)
        checkpoint = tlog.checkpoint(c, settings, "acme", SEP)
        billed = accounting.invoice(c, "acme", SEP)

    out = _cli(settings, "prune", "--provider", "acme", "--month", SEP, "--out", str(tmp_path / "sep"))
    assert out.returncode == 0, out.stderr
    assert f"archived and verified: {tmp_path / 'sep'} ({size} heartbeats" in out.stdout
    report = verify_bundle(tmp_path / "sep", workers=1, collector_key=tlog.signer(settings).verifier_key())
    assert report.ok and (tmp_path / "sep" / "closed" / "checkpoint").exists()
    assert len((tmp_path / "sep" / "heartbeats.jws").read_text().splitlines()) == size

    left = _jws_left(settings)
    # Kept: a's and b's last heartbeats of September (October's anchors: a's seq 48, b's seq 2) and
    # the fork's hour (both copies of a's seq 30)
    L = s.leaves.c
    with db.read_conn(settings.engine) as c:
        anchors = set(c.execute(sa.select(L.idx).where(L.month == SEP, sa.or_(
            sa.and_(L.kid == w["a"].kid, L.seq == 48), sa.and_(L.kid == w["b"].kid, L.seq == 2)))).scalars())
        fork_hour = set(c.execute(sa.select(s.leaves.c.idx).where(
            s.leaves.c.month == SEP, s.leaves.c.time >= T0 + 29 * 3600, s.leaves.c.time < T0 + 30 * 3600)
        ).scalars())
    assert len(anchors) == 2 and len(fork_hour) == 2 and left == anchors | fork_hour and size == 51
    assert f"dropped from the database: {size - len(left)} heartbeats; kept: {len(left)}" in out.stdout

    assert _fresh_result(settings, SEP) == before  # the quarantined hour rebuilt from the kept JWS
    with db.read_conn(settings.engine) as c:
        assert tlog.checkpoint(c, settings, "acme", SEP) == checkpoint
        assert accounting.invoice(c, "acme", SEP) == billed
        export(c, settings, "acme", OCT, tmp_path / "oct")  # its anchors are September's kept leaves
    assert verify_bundle(tmp_path / "oct", workers=1).ok

    # What needs September's heartbeats names the archive; nothing was written
    bad = _cli(settings, "export", "--provider", "acme", "--month", SEP, "--out", str(tmp_path / "again"))
    assert bad.returncode == 1 and f"archived to {tmp_path / 'sep'}" in bad.stderr
    assert not (tmp_path / "again").exists()
    with pytest.raises(tlog.EvidencePruned):
        db.write_tx(settings.engine, lambda c: amend_closed(c, "acme", SEP, tools.catalog(), 0))

    # Ingest: a retry is a duplicate, a new line of September is refused by name, October goes on
    a, b = w["a"], w["b"]
    late = b.beat(T0 + 45 * 3600, {"TR7-0002": "running"})
    now = a.beat(parse_time("2026-10-01T01:00:00Z"), {"TR7-0001": "running"})
    got = ingest_lines(settings.engine, [w["lines"][3], late, now])
    assert [r["status"] for r in got] == ["duplicate", "rejected", "accepted"]
    assert got[1]["reason"].startswith("month.pruned") and got[1]["seq"] == 4
    assert _jws_left(settings) == left

    again = _cli(settings, "prune", "--provider", "acme", "--month", SEP, "--out", str(tmp_path / "x"))
    assert again.returncode == 0 and "was pruned at" in again.stdout
    assert "dropped from the database: 0" in again.stdout
    listed = json.loads(_cli(settings, "prune", "--list").stdout)
    assert [(x["month"], x["size"], x["kept"], x["archive"]) for x in listed] == [
        (SEP, size, len(left), str(tmp_path / "sep"))]


def test_prune_refuses_an_open_month_and_a_log_that_grew_while_archiving(settings, tools, tmp_path) -> None:
    w = _month_with_a_fork(settings, tools)
    out = _cli(settings, "prune", "--provider", "acme", "--month", OCT, "--out", str(tmp_path / "oct"))
    assert out.returncode == 1 and "is not closed: close it first" in out.stderr
    assert not (tmp_path / "oct").exists()
    size = len(_jws_left(settings))

    late = w["b"].beat(T0 + 46 * 3600, {"TR7-0002": "running"})
    sent = []

    def progress(stage: str, done: int, total: int) -> None:  # a late heartbeat while the bundle is written
        if not sent:
            sent.append(ingest_lines(settings.engine, [late])[0]["status"])

    with pytest.raises(prune.PruneRefused, match=r"1 heartbeat\(s\) arrived while the bundle was written"):
        prune.prune(settings, settings.engine, "acme", SEP, tmp_path / "sep", 0, progress)
    assert sent == ["accepted"] and len(_jws_left(settings)) == size + 1  # nothing dropped
    with db.read_conn(settings.engine) as c:
        assert prune.listing(c) == [] and tlog.lock_log_state(c, "acme", SEP)[2] is None
    assert not any((tmp_path / "sep").iterdir())  # the bundle that lacks the late line is gone

    # the timer's form: one fixed archive path, which a bundle left there blocked for good
    late2 = w["b"].beat(T0 + 47 * 3600, {"TR7-0002": "running"})
    sent.clear()

    def progress2(stage: str, done: int, total: int) -> None:
        if not sent:
            sent.append(ingest_lines(settings.engine, [late2])[0]["status"])

    archive = tmp_path / "archive" / "acme" / SEP
    with pytest.raises(prune.PruneRefused, match=r"lacked them and was removed"):
        prune.prune(settings, settings.engine, "acme", SEP, archive, 0, progress2, compress=True)
    assert sent == ["accepted"] and not list(archive.parent.iterdir())
    done = prune.prune(settings, settings.engine, "acme", SEP, archive, 0, compress=True)  # the next run
    assert done.size == size + 2 and done.archive.is_file()


def test_a_prune_cut_short_is_finished_by_the_next_one(settings, tools, tmp_path: Path, monkeypatch) -> None:
    w = _month_with_a_fork(settings, tools)
    monkeypatch.setattr(prune, "CHUNK", 10)
    calls = []
    real = prune._drop

    def crash(*args):  # the process dies after the first chunk
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(prune, "_drop", crash)
    with pytest.raises(KeyboardInterrupt):
        prune.prune(settings, settings.engine, "acme", SEP, tmp_path / "sep", 0)
    partly = _jws_left(settings)
    monkeypatch.setattr(prune, "_drop", real)
    # Sealed already: ingest refuses the month, and export names the archive
    late = w["b"].beat(T0 + 50 * 3600, {"TR7-0002": "running"})
    got = ingest_lines(settings.engine, [late])[0]
    assert got["status"] == "rejected" and got["reason"].startswith("month.pruned")
    # Found under the log's lock (a prune seals between a batch's read and its write): refused, and
    # a line logged before is still a duplicate
    got = ingest_lines(settings.engine, [late, w["lines"][0]])
    assert [x["status"] for x in got] == ["rejected", "duplicate"]
    assert got[0]["reason"].startswith("month.pruned")
    with db.read_conn(settings.engine) as c, pytest.raises(tlog.EvidencePruned):
        export(c, settings, "acme", SEP, tmp_path / "no")
    r = prune.prune(settings, settings.engine, "acme", SEP, tmp_path / "unused", 0)
    assert r.resumed and r.dropped == len(partly) - r.kept and len(_jws_left(settings)) == r.kept
    assert not (tmp_path / "unused").exists()


def test_a_bundle_that_does_not_verify_keeps_the_evidence(settings, tools, tmp_path) -> None:
    """A leaf altered in the database (b's seq 2 signed again by its key, on another vm: the bill
    is the same, the log's checkpoint is not): the bundle fails verify, and nothing is dropped."""
    w = _month_with_a_fork(settings, tools)
    b, L = w["b"], s.leaves.c
    with db.read_conn(settings.engine) as c:
        first = c.execute(sa.select(L.digest).where(L.kid == b.kid, L.seq == 1)).scalar_one()
    b.seq, b.prev = 2, first
    other = b.beat(T0 + 40 * 3600 + 90, {"TR7-0002": "running"}, vm="vm-elsewhere")
    db.write_tx(settings.engine, lambda c: c.execute(
        s.leaves.update().where(L.kid == b.kid, L.seq == 2).values(jws=other)))
    size = len(_jws_left(settings))
    out = _cli(settings, "prune", "--provider", "acme", "--month", SEP, "--out", str(tmp_path / "sep"))
    assert out.returncode == 1 and "does not verify" in out.stderr and "the evidence stays" in out.stderr
    assert len(_jws_left(settings)) == size
    with db.read_conn(settings.engine) as c:
        assert prune.listing(c) == []


def test_migration_0015_adds_the_seal_to_an_existing_database(settings, tools) -> None:
    """0015 on a database made before it: the column and the table, and ingest goes on as before."""
    tools.migrate_to(settings, "0014_vacuum_after_inserts")
    with settings.engine.connect() as c:
        assert "pruned_at" not in {x["name"] for x in sa.inspect(c).get_columns("logs")}
        assert not sa.inspect(c).has_table("prunes")
    tools.migrate_to(settings, "head")
    with settings.engine.connect() as c:
        assert "pruned_at" in {x["name"] for x in sa.inspect(c).get_columns("logs")}
        assert sa.inspect(c).has_table("prunes")
    w = _month_with_a_fork(settings, tools)
    with db.read_conn(settings.engine) as c:
        assert tlog.lock_log_state(c, "acme", SEP)[2] is None and len(w["lines"]) == tlog.log_size(
            c, "acme", SEP) + tlog.log_size(c, "acme", OCT)


def test_prune_before_a_month_takes_every_closed_month_left_oldest_first(settings, tools, tmp_path) -> None:
    """For a schedule: `--before` prunes each closed month before it into its own directory, skips
    open ones and those done, and finishes one cut short."""
    _month_with_a_fork(settings, tools)
    db.write_tx(settings.engine, lambda c: accounting.close(c, settings, "acme", OCT))
    with db.read_conn(settings.engine) as c:
        assert prune.due(c, "acme", OCT) == [SEP] and prune.due(c, "acme", "2026-12") == [SEP, OCT]
    # --keep-months (the packaged timer's): keep the current month and the N before it; N counted
    # here so that October is the first month kept, whatever today is
    keep = len(_months_from(OCT, month_of(int(time.time())))) - 1
    out = _cli(settings, "prune", "--provider", "acme", "--keep-months", str(keep),
               "--out", str(tmp_path / "a"))
    assert out.returncode == 0 and out.stdout.count("archived and verified") == 1, out.stderr
    assert (tmp_path / "a" / SEP / "manifest.json").exists() and not (tmp_path / "a" / OCT).exists()
    out = _cli(settings, "prune", "--provider", "acme", "--before", "2026-12", "--out", str(tmp_path / "a"))
    assert out.returncode == 0 and out.stdout.count("archived and verified") == 1, out.stderr
    for m in (SEP, OCT):
        assert verify_bundle(tmp_path / "a" / m, workers=1).ok
    again = _cli(settings, "prune", "--provider", "acme", "--before", "2026-12", "--out", str(tmp_path / "a"))
    assert again.returncode == 0 and "no closed month before 2026-12 left to prune" in again.stdout
    with db.read_conn(settings.engine) as c:
        assert [x["month"] for x in prune.listing(c) if x["done_at"]] == [SEP, OCT]
        P = s.prunes.c  # a prune cut short is due again, and finished
    db.write_tx(settings.engine, lambda c: c.execute(
        s.prunes.update().where(P.month == OCT).values(done_at=None)))
    with db.read_conn(settings.engine) as c:
        assert prune.due(c, "acme", "2026-12") == [OCT]
    again = _cli(settings, "prune", "--provider", "acme", "--before", "2026-12", "--out", str(tmp_path / "a"))
    assert again.returncode == 0 and "2026-10 was pruned at" in again.stdout
    for args in (["--provider", "acme", "--month", SEP, "--before", OCT], ["--month", SEP]):
        bad = _cli(settings, "prune", *args, "--out", "x")
        assert bad.returncode == 1 and "either --provider with --month, or --before" in bad.stderr
    bad = _cli(settings, "prune", "--before", OCT, "--keep-months", "3", "--out", "x")
    assert bad.returncode == 1 and "one of --month, --before and --keep-months" in bad.stderr
    bad = _cli(settings, "prune", "--keep-months", "-1", "--out", "x")
    assert bad.returncode == 2 and "a number of months (0 or more)" in bad.stderr


def _months_from(first: str, last: str) -> list[str]:
    out = [first]
    while out[-1] != last:
        out.append(next_month(out[-1]))
    return out


def test_keep_months_counts_back_from_the_current_month() -> None:
    now = parse_time("2026-12-06T04:37:50Z")
    assert [keep_cutoff(now, n) for n in (0, 1, 2, 12, 13)] == [
        "2026-12", "2026-11", "2026-10", "2025-12", "2025-11"]
    assert keep_cutoff(parse_time("2027-01-01T00:00:00Z"), 1) == "2026-12"  # the month turns at 00:00 UTC
    assert keep_cutoff(parse_time("2026-12-31T23:59:59Z"), 1) == "2026-11"


def test_prune_before_without_a_provider_takes_every_provider(settings, tools, tmp_path) -> None:
    """One schedule for a collector of many providers: each into --out/PROVIDER/YYYY-MM."""
    _month_with_a_fork(settings, tools)
    db.write_tx(settings.engine, lambda c: registry.apply_catalog(c, tools.catalog("beta")))
    z = tools.Agent("z")
    tools.enrol(settings, "beta", z, parse_time("2026-08-01T00:00:00Z"))
    got = ingest_lines(settings.engine, [z.beat(T0 + 600, {"TR7-0001": "running"})])
    assert got[0]["status"] == "accepted"
    db.write_tx(settings.engine, lambda c: accounting.close(c, settings, "beta", SEP))
    out = _cli(settings, "prune", "--before", OCT, "--out", str(tmp_path / "all"))
    assert out.returncode == 0 and out.stdout.count("archived and verified") == 2, out.stderr
    for p in ("acme", "beta"):
        assert verify_bundle(tmp_path / "all" / p / SEP, workers=1).ok
    with db.read_conn(settings.engine) as c:
        assert [(x["provider"], x["month"]) for x in prune.listing(c)] == [("acme", SEP), ("beta", SEP)]
    again = _cli(settings, "prune", "--before", OCT, "--out", str(tmp_path / "all"))
    assert again.returncode == 0 and "left to prune for any provider" in again.stdout


def test_unprune_puts_the_month_back_from_its_archive_and_only_its_own_lines(settings, tools, tmp_path):
    """Pruned too early: the archived bundle puts every JWS back, each line checked against the
    leaf hash the log kept for its index; a bundle of another month, or one altered, changes
    nothing and the month stays sealed. Afterwards the month exports the same heartbeats and takes
    late ones again."""
    w = _month_with_a_fork(settings, tools)
    with db.read_conn(settings.engine) as c:
        export(c, settings, "acme", OCT, tmp_path / "oct")
    out = _cli(settings, "prune", "--provider", "acme", "--month", SEP, "--out", str(tmp_path / "sep"))
    assert out.returncode == 0, out.stderr
    left = _jws_left(settings)

    bad = _cli(settings, "unprune", "--provider", "acme", "--month", SEP, "--from", str(tmp_path / "oct"))
    assert bad.returncode == 1 and "line 1 is not leaf 0 of acme 2026-09's log" in bad.stderr
    altered = tmp_path / "altered"
    shutil.copytree(tmp_path / "sep", altered)
    lines = (altered / "heartbeats.jws").read_bytes().split(b"\n")
    lines[7] = lines[8]
    (altered / "heartbeats.jws").write_bytes(b"\n".join(lines))
    bad = _cli(settings, "unprune", "--provider", "acme", "--month", SEP, "--from", str(altered))
    assert bad.returncode == 1 and "line 8 is not leaf 7" in bad.stderr
    with db.read_conn(settings.engine) as c:
        assert tlog.pruned(c, "acme", SEP) is not None
    assert _jws_left(settings) == left

    ok = _cli(settings, "unprune", "--provider", "acme", "--month", SEP, "--from", str(tmp_path / "sep"))
    assert ok.returncode == 0 and f"{51 - len(left)} heartbeats put back" in ok.stdout, ok.stderr
    assert len(_jws_left(settings)) == 51
    if settings.engine.dialect.name == "postgresql":
        # unprune analysed the table first: after a VACUUM FULL with no statistics, PostgreSQL looked
        # each leaf up by reading the whole month (bench_prune: 64 s instead of 4 s). analyze_count
        # counts ANALYZE commands only, never autovacuum's.
        with db.read_conn(settings.engine) as c:
            assert c.exec_driver_sql("SELECT analyze_count FROM pg_stat_user_tables "
                                     "WHERE relname = 'leaves'").scalar_one() >= 1
    with db.read_conn(settings.engine) as c:
        assert tlog.pruned(c, "acme", SEP) is None and prune.listing(c) == []
        export(c, settings, "acme", SEP, tmp_path / "again")
    assert verify_bundle(tmp_path / "again", workers=1).ok
    same = (tmp_path / "again" / "heartbeats.jws").read_bytes()
    assert same == (tmp_path / "sep" / "heartbeats.jws").read_bytes()
    late = w["b"].beat(T0 + 45 * 3600, {"TR7-0002": "running"})
    assert ingest_lines(settings.engine, [late])[0]["status"] == "accepted"
    again = _cli(settings, "unprune", "--provider", "acme", "--month", SEP, "--from", str(tmp_path / "sep"))
    assert again.returncode == 1 and "is not pruned" in again.stderr


def test_prune_compress_keeps_one_archive_that_verifies_and_unprune_reads(settings, tools, tmp_path) -> None:
    """The schedule's form (tr7-collector-prune.service passes --compress): each month one
    PROVIDER/YYYY-MM.tar.gz, nothing else left beside it; it verifies as it is, is what the prune
    records, and puts the month back; a damaged copy is refused by name and the month stays sealed."""
    _month_with_a_fork(settings, tools)
    dead = tmp_path / "all" / "acme" / f".{SEP}.tar.gz.999999999.x1"  # a run killed mid-way (no such pid)
    (dead / "bundle").mkdir(parents=True)
    out = _cli(settings, "prune", "--before", OCT, "--out", str(tmp_path / "all"), "--compress")
    assert out.returncode == 0, out.stderr
    archive = tmp_path / "all" / "acme" / f"{SEP}.tar.gz"
    assert f"archived and verified: {archive} (51 heartbeats" in out.stdout
    assert sorted(p.name for p in (tmp_path / "all" / "acme").iterdir()) == [archive.name]
    key = tlog.signer(settings).verifier_key()
    report = verify_bundle(archive, workers=1, collector_key=key)
    assert report.ok and report.lines == 51, [str(f) for f in report.errors]
    with db.read_conn(settings.engine) as c:
        assert [x["archive"] for x in prune.listing(c)] == [str(archive)]
    bad = _cli(settings, "export", "--provider", "acme", "--month", SEP, "--out", str(tmp_path / "x"))
    assert bad.returncode == 1 and f"archived to {archive}" in bad.stderr

    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    bad = _cli(settings, "unprune", "--provider", "acme", "--month", SEP, "--from", str(cut))
    assert bad.returncode == 1 and "the month stays sealed" in bad.stderr and "Traceback" not in bad.stderr
    with db.read_conn(settings.engine) as c:
        assert tlog.pruned(c, "acme", SEP) is not None

    ok = _cli(settings, "unprune", "--provider", "acme", "--month", SEP, "--from", str(archive))
    assert ok.returncode == 0 and "heartbeats put back" in ok.stdout, ok.stderr
    assert len(_jws_left(settings)) == 51
    again = _cli(settings, "export", "--provider", "acme", "--month", SEP, "--out", str(tmp_path / "sep"),
                 "--compress")
    assert again.returncode == 0 and again.stdout.strip() == str(tmp_path / "sep.tar.gz"), again.stderr
    # the month's bundle made again holds the same heartbeats

    def heartbeats(path: Path) -> bytes:
        with tarfile.open(path) as t:
            f = t.extractfile(next(m for m in t.getmembers() if m.name.endswith("/heartbeats.jws")))
            assert f is not None
            return f.read()

    assert heartbeats(tmp_path / "sep.tar.gz") == heartbeats(archive)
    over = _cli(settings, "export", "--provider", "acme", "--month", SEP, "--compress",
                "--out", str(tmp_path / "sep.tar.gz"))
    assert over.returncode == 1 and "exists" in over.stderr and "Traceback" not in over.stderr


def test_staging_removes_only_what_a_dead_run_left(tmp_path) -> None:
    """A staging directory holds a whole bundle: one left by a killed run is removed by the next,
    one of a running process (another export right now) is not."""
    live = tmp_path / f".x.tar.gz.{os.getpid()}.a1"
    gone = tmp_path / ".x.tar.gz.999999999.b2"
    other = tmp_path / ".y.tar.gz.999999999.c3"  # another archive's: not this one's business
    for d in (live, gone, other):
        d.mkdir()
    new = staging(tmp_path / "x.tar.gz")
    assert new.is_dir() and new.name.startswith(f".x.tar.gz.{os.getpid()}.")
    assert live.is_dir() and other.is_dir() and not gone.exists()


def test_copy_with_runs_before_anything_is_dropped_and_a_failure_drops_nothing(settings, tools, tmp_path):
    """--copy-with: the archive goes off the host before the month's evidence leaves the database.
    A copy that fails leaves the month as it was (archive removed, nothing sealed nor dropped), so
    the next run, with the copy working, prunes it."""
    _month_with_a_fork(settings, tools)
    with db.read_conn(settings.engine) as c:
        every = set(range(tlog.log_size(c, "acme", SEP)))
    failing = f"{sys.executable} -c 'import sys; sys.exit(3)' {{archive}}"
    bad = _cli(settings, "prune", "--provider", "acme", "--month", SEP, "--out", str(tmp_path / "sep"),
               "--compress", "--copy-with", failing)
    assert bad.returncode == 1 and "exited with status 3; nothing was dropped" in bad.stderr, bad.stderr
    assert not (tmp_path / "sep.tar.gz").exists() and _jws_left(settings) == every
    assert json.loads(_cli(settings, "prune", "--list").stdout) == []

    offsite = tmp_path / "offsite"
    offsite.mkdir()
    copying = f"cp {{archive}} '{offsite}/{{provider}} {{month}}.tar.gz'"  # a quoted word with a space
    ok = _cli(settings, "prune", "--provider", "acme", "--month", SEP, "--out", str(tmp_path / "sep"),
              "--compress", "--copy-with", copying)
    assert ok.returncode == 0, ok.stderr
    copied = offsite / f"acme {SEP}.tar.gz"
    assert copied.read_bytes() == (tmp_path / "sep.tar.gz").read_bytes()
    assert verify_bundle(copied, workers=1).ok and len(_jws_left(settings)) < len(every)


def test_an_unprune_while_the_prune_still_drops_stops_the_prune_and_keeps_every_line(
    settings, tools, tmp_path, monkeypatch
) -> None:
    """The timer's prune still dropping when an operator unprunes: the unprune lifted the seal and
    the prune went on dropping, leaving the month unsealed with heartbeats in no database row; it
    took new heartbeats no archive held, and export, prune and unprune all failed on it."""
    from collector import unprune as unprune_mod

    _month_with_a_fork(settings, tools)
    monkeypatch.setattr(prune, "CHUNK", 10)  # several drop transactions
    out, done = tmp_path / "archive", []

    def operator_unprunes(stage: str, n: int, total: int) -> None:
        if stage.startswith("dropping") and not done:
            done.append(unprune_mod.unprune(settings.engine, "acme", SEP, out))

    with pytest.raises(prune.PruneRefused, match="was unpruned while this prune dropped"):
        prune.prune(settings, settings.engine, "acme", SEP, out, int(time.time()), progress=operator_unprunes)
    with db.read_conn(settings.engine) as c:
        size = tlog.log_size(c, "acme", SEP)
        assert tlog.pruned(c, "acme", SEP) is None
    assert _jws_left(settings) == set(range(size))  # every line is in the database again
    with db.read_conn(settings.engine) as c:
        path, agrees = export(c, settings, "acme", SEP, tmp_path / "again")
    assert agrees and verify_bundle(path, workers=1).ok


def test_unprune_keeps_the_seal_while_a_prune_drops_lines_again(settings, tools, tmp_path) -> None:
    """The other order: a prune drops a chunk after unprune put it back, before the seal is lifted."""
    from collector import unprune as unprune_mod

    _month_with_a_fork(settings, tools)
    prune.prune(settings, settings.engine, "acme", SEP, tmp_path / "archive", int(time.time()))
    with pytest.raises(prune.PruneRefused, match="a prune of the month is still running"):
        db.write_tx(settings.engine, lambda c: unprune_mod._unseal(c, "acme", SEP))
    with db.read_conn(settings.engine) as c:
        assert tlog.pruned(c, "acme", SEP) is not None  # still sealed: ingest refuses the month


def test_a_second_prune_of_the_same_month_is_refused_by_name(settings, tools, tmp_path) -> None:
    """The timer's run and an operator's at once: the second seal was a UNIQUE-constraint traceback."""
    _month_with_a_fork(settings, tools)
    r = prune.prune(settings, settings.engine, "acme", SEP, tmp_path / "first", int(time.time()))
    with pytest.raises(prune.PruneRefused, match=r"was pruned meanwhile by another run, into .*first"):
        db.write_tx(settings.engine, lambda c: prune._seal(c, "acme", SEP, r.size, str(tmp_path / "second"),
                                                           "0" * 64, 0, int(time.time())))


def test_a_month_unpruned_is_pruned_again_into_its_own_archive(settings, tools, tmp_path) -> None:
    """After `unprune`, the timer's next run refused to write over the month's archive, every run,
    and stopped before every later month. The archive, when it holds the log as it is (same size
    and root), is the month's archive again; when heartbeats came after the unprune, the run says
    so and what to do. Found by an ops review."""
    made = _month_with_a_fork(settings, tools)
    every = tmp_path / "all"
    timer = ("prune", "--keep-months", "0", "--out", str(every), "--compress", "--provider", "acme")
    first = _cli(settings, *timer)
    assert first.returncode == 0, first.stderr
    archive = every / f"{SEP}.tar.gz"
    original = archive.read_bytes()
    unprune = ("unprune", "--provider", "acme", "--month", SEP, "--from", str(archive))
    assert _cli(settings, *unprune).returncode == 0
    again = _cli(settings, *timer)
    assert again.returncode == 0, again.stderr
    assert archive.read_bytes() == original  # the same file: neither rewritten nor removed
    with db.read_conn(settings.engine) as c:
        assert [x["archive"] for x in prune.listing(c)] == [str(archive)]
        assert tlog.pruned(c, "acme", SEP) is not None
    # a copy that fails on the earlier archive drops nothing and keeps the archive (not this run's)
    assert _cli(settings, *unprune).returncode == 0
    failing = f"{sys.executable} -c 'import sys; sys.exit(3)' {{archive}}"
    bad = _cli(settings, *timer, "--copy-with", failing)
    assert bad.returncode == 1 and f"the earlier archive {archive} is kept" in bad.stderr, bad.stderr
    assert archive.read_bytes() == original
    with db.read_conn(settings.engine) as c:
        assert tlog.pruned(c, "acme", SEP) is None  # nothing sealed nor dropped
    assert _cli(settings, *timer).returncode == 0
    # unpruned again, and a late heartbeat of September comes: the archive no longer holds the log
    assert _cli(settings, *unprune).returncode == 0
    late = made["a"].beat(parse_time("2026-09-29T10:00:00Z"), {"TR7-0001": "running"})
    assert [r["status"] for r in ingest_lines(settings.engine, [late])] == ["accepted"]
    stale = _cli(settings, *timer)
    assert stale.returncode == 1 and "Traceback" not in stale.stderr, stale.stderr
    assert f"{archive} is an archive of acme {SEP} at 51 heartbeats; the log now holds 52" in stale.stderr
    assert f"move {archive} aside" in stale.stderr and archive.read_bytes() == original
