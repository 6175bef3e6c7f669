"""Plausible operator mistakes are one line and the right exit, never a traceback or a trap.

Found by a review that followed the docs literally: a refused --origin left a key behind that
blocked every later command; an unbalanced quote in --copy-with crashed after the whole month was
archived and left the archive in the way; bad TR7_* values and damaged key, origin or database
files crashed the tools; a PDF font that is no font crashed the invoice.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from collector import render


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "collector.cli", *args], capture_output=True, text=True,
                          check=False, env={**os.environ, **(env or {})})


def test_a_refused_origin_leaves_nothing_behind(tmp_path: Path) -> None:
    data = str(tmp_path / "d")
    bad = _cli("migrate", "--data-dir", data, "--origin", "https://collector.example.net")
    assert bad.returncode == 1 and "must be [A-Za-z0-9._-]+" in bad.stderr
    assert not (tmp_path / "d" / "collector.key").exists()
    assert _cli("migrate", "--data-dir", data, "--origin", "collector.example.net").returncode == 0


def test_damaged_key_origin_and_database_files_are_named(tmp_path: Path) -> None:
    for name, content, said in (("collector.key", b"", "collector.key is not a collector key"),
                                ("origin", b"\n", "origin holds no collector origin"),
                                ("collector.db", b"garbage" * 100, "is not an SQLite database")):
        data = tmp_path / name
        assert _cli("migrate", "--data-dir", str(data), "--origin", "c.test").returncode == 0
        for extra in ("collector.db-wal", "collector.db-shm"):
            (data / extra).unlink(missing_ok=True)
        (data / name).write_bytes(content)
        out = _cli("agent", "list", "--data-dir", str(data))
        assert out.returncode == 1 and said in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_a_key_or_marks_write_killed_before_its_rename_leaves_no_file_for_good(tmp_path: Path) -> None:
    """The key, the next key, the origin and the marks are written through a temporary file of the
    writer's own; one killed before its rename left it (a private key's copy) for good. Any
    command removes those of dead processes, and only those."""
    from collector import highwater, keyrotation, settings

    assert {"collector.key", keyrotation.NEXT_KEY, "origin", highwater.FILE} == set(settings._WHOLE_FILES)
    data = tmp_path / "d"
    assert _cli("migrate", "--data-dir", str(data), "--origin", "c.test").returncode == 0
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = [data / f"{name}.{dead.pid}.0badf00d.tmp" for name in settings._WHOLE_FILES]
    kept = [data / f"collector.key.{os.getpid()}.0badf00d.tmp", data / "origin.notes.tmp"]
    for f in stale + kept:
        f.write_text("x")
        os.utime(f, (time.time() - 120, time.time() - 120))  # older than a rename takes (DEAD_AGE)
    assert _cli("agent", "list", "--data-dir", str(data)).returncode == 0
    assert [f.exists() for f in stale] == [False] * 4 and all(f.exists() for f in kept)


def test_an_unbalanced_copy_command_is_refused_before_any_work(tmp_path: Path) -> None:
    out = _cli("prune", "--data-dir", str(tmp_path / "d"), "--provider", "p", "--month", "2026-11",
               "--out", str(tmp_path / "a"), "--copy-with", "cp '{archive}")
    assert out.returncode == 2 and "argument --copy-with" in out.stderr
    assert "No closing quotation" in out.stderr
    assert not (tmp_path / "d").exists() and not (tmp_path / "a").exists()


def test_bad_environment_values_are_one_line(tmp_path: Path) -> None:
    data = str(tmp_path / "d")
    assert _cli("migrate", "--data-dir", data).returncode == 0
    smtp = _cli("account", "tick", "--data-dir", data, env={"TR7_SMTP_HOST": "mail", "TR7_SMTP_PORT": "abc"})
    assert smtp.returncode == 1 and "TR7_SMTP_PORT='abc' must be a port number" in smtp.stderr
    tick = _cli("serve", "--data-dir", data, "--listen", "127.0.0.1:1", env={"TR7_ACCOUNTS_TICK": "abc"})
    assert tick.returncode == 1 and "TR7_ACCOUNTS_TICK='abc' must be a number of seconds" in tick.stderr
    assert "Traceback" not in smtp.stderr + tick.stderr


def test_a_pdf_font_that_is_no_font_falls_back(tmp_path: Path, monkeypatch) -> None:
    not_a_font = tmp_path / "font.ttf"
    not_a_font.write_text("this is not a TrueType font\n")
    monkeypatch.setenv("TR7_PDF_FONT", str(not_a_font))
    inv = {"provider": "acme", "month": "2026-10", "currency": "EUR", "lines": [], "device_days": [],
           "totals": {}, "total": "0.00"}
    assert render.pdf_bytes(inv).startswith(b"%PDF")


def test_a_typed_provider_that_does_not_exist_is_named_not_nothing_to_do(tmp_path: Path) -> None:
    data = str(tmp_path / "d")
    for args in (("prune", "--provider", "acmee", "--before", "2026-12", "--out", str(tmp_path / "a")),
                 ("token", "list", "--provider", "acmee")):
        out = _cli(*args, "--data-dir", data)
        assert out.returncode == 1 and "no provider 'acmee'" in out.stderr, args


def test_version_and_counts_of_at_least_one() -> None:
    assert _cli("--version").stdout.startswith("tr7-collector ")
    out = _cli("serve", "--workers", "0")
    assert out.returncode == 2 and "argument --workers" in out.stderr
    audit = subprocess.run([sys.executable, "-m", "audit.cli", "verify", "--workers", "0", "."],
                           capture_output=True, text=True, check=False)
    assert audit.returncode == 2 and "argument --workers" in audit.stderr


def test_export_into_a_non_empty_directory_is_refused_before_the_bill_is_recomputed(
    settings, tmp_path: Path, monkeypatch
) -> None:
    """It refused only after recomputing the month's bill from every heartbeat (minutes, big)."""
    import pytest

    from audit.bundle import BundleError
    from collector import db, reference
    from collector.export import export

    def too_early(*_a, **_k):
        raise AssertionError("the bill was recomputed before the directory was checked")

    monkeypatch.setattr(reference, "full_result", too_early)
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "stray.txt").write_text("x")
    with db.read_conn(settings.engine) as c, pytest.raises(BundleError, match="is not empty"):
        export(c, settings, "acme", "2026-10", out)


def test_a_client_gone_mid_body_is_one_log_line_not_a_traceback(tmp_path: Path) -> None:
    """Anyone could fill the collector's journal with uvicorn's ~60-line ClientDisconnect traceback."""
    import socket
    import time

    from tests._serve import free_port

    data = str(tmp_path / "d")
    assert _cli("migrate", "--data-dir", data).returncode == 0
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        cmd = [sys.executable, "-m", "collector.cli", "serve", "--data-dir", data,
               "--listen", f"127.0.0.1:{port}"]
        proc = subprocess.Popen(cmd, stderr=out, stdout=out,
                                env={**os.environ, "TR7_ACCOUNTS_TICK": "0", "TR7_WEB_WARM": "0"})
    try:
        deadline = time.monotonic() + 60
        while "event=ingest_aborted" not in log.read_text():
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                    s.sendall(b"POST /v1/heartbeats HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
                              b"Content-Length: 100000\r\n\r\n" + b"A" * 1000)
                    time.sleep(0.3)
            except OSError:
                time.sleep(0.3)  # not listening yet
            time.sleep(0.5)
    finally:
        proc.terminate()
        proc.wait(60)
    text = log.read_text()
    assert "Traceback" not in text and "ClientDisconnect" not in text


def test_sighup_to_a_single_worker_is_said_and_ignored(tmp_path: Path) -> None:
    """SIGHUP ended a one-worker `serve` (the default) without a word, exit 129, which systemd takes
    for a clean stop; several workers' uvicorn restarts them instead. Found by an ops review."""
    import signal
    import time

    import httpx

    from tests._serve import free_port

    data = str(tmp_path / "d")
    assert _cli("migrate", "--data-dir", data).returncode == 0
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "collector.cli", "serve", "--data-dir", data,
                                 "--listen", f"127.0.0.1:{port}"], stderr=out, stdout=out,
                                env={**os.environ, "TR7_ACCOUNTS_TICK": "0", "TR7_WEB_WARM": "0"})
    url = f"http://127.0.0.1:{port}/healthz"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
            try:
                if httpx.get(url, timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        proc.send_signal(signal.SIGHUP)
        while "event=sighup" not in log.read_text():
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
            time.sleep(0.2)
        assert proc.poll() is None and httpx.get(url, timeout=5).status_code == 200
    finally:
        proc.terminate()
        assert proc.wait(60) in (0, -signal.SIGTERM)  # uvicorn ends by the signal it was stopped by


def test_a_database_the_service_cannot_write_is_refused_at_start(tmp_path: Path) -> None:
    """A collector.db restored by root and left 0644: `serve` started, /healthz said ok, and every
    batch got a 500 with a 53-line traceback; one left 0600 said only "unable to open database
    file". Both now name the file and who must own it. Found by an ops review."""
    data = tmp_path / "d"
    assert _cli("migrate", "--data-dir", str(data)).returncode == 0
    # held to the files' modes even as root (no capabilities: CAP_DAC_OVERRIDE writes anything)
    run = ["setpriv", "--bounding-set=-all", "--inh-caps=-all"] if os.geteuid() == 0 else []
    db = data / "collector.db"
    for extra in ("collector.db-wal", "collector.db-shm"):
        (data / extra).unlink(missing_ok=True)
    db.chmod(0o444)
    cli = [*run, sys.executable, "-m", "collector.cli"]
    out = subprocess.run([*cli, "serve", "--data-dir", str(data), "--listen", "127.0.0.1:1"],
                         capture_output=True, text=True, check=False, timeout=120)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert "cannot write the database: attempt to write a readonly database" in out.stderr
    assert f"{db}: the collector's user must be able to read and write it" in out.stderr
    db.chmod(0o000)
    out = subprocess.run([*cli, "agent", "list", "--data-dir", str(data)],
                         capture_output=True, text=True, check=False, timeout=120)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert "unable to open database file" in out.stderr and f"{db}: the collector's user" in out.stderr


def test_a_close_of_a_month_not_begun_or_before_the_catalog_is_refused(tmp_path: Path, tools) -> None:
    """`close --month 2027-12 --force` (a typo'd year) and `close --month 1999-01` froze 0.00
    invoices for good: a close cannot be undone, and the month's real usage would later come as
    adjustment lines. Found by an ops review."""
    import time

    from protocol.timefmt import month_of, next_month, previous_month

    data = str(tmp_path / "d")
    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps(tools.catalog()))  # its licenses begin in 2026
    applied = _cli("apply", "--data-dir", data, str(catalog))
    assert applied.returncode == 0, applied.stderr
    ahead = next_month(next_month(month_of(int(time.time()))))
    out = _cli("close", "--data-dir", data, "--provider", "acme", "--month", ahead, "--force")
    assert out.returncode == 1 and f"{ahead} has not begun: nothing to close" in out.stderr, out.stderr
    out = _cli("close", "--data-dir", data, "--provider", "acme", "--month", "1999-01")
    assert out.returncode == 1 and "ended before acme's first license begins" in out.stderr, out.stderr
    last = previous_month(month_of(int(time.time())))  # one the catalog may bill: closed as asked
    out = _cli("close", "--data-dir", data, "--provider", "acme", "--month", last)
    assert out.returncode == 0, out.stderr
