"""Operator errors of `tr7-collector` are one clear line and exit 1, never a traceback."""

import json
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import sqlalchemy as sa

from collector import db
from collector import schema as s
from collector.ingest import ingest_lines
from collector.settings import Settings
from protocol.timefmt import month_bounds, month_of, previous_month


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_database_is_one_line(tmp_path: Path) -> None:
    url = f"postgresql://nobody@127.0.0.1:{_closed_port()}/tr7"
    out = subprocess.run([sys.executable, "-m", "collector.cli", "migrate", "--data-dir", str(tmp_path),
                          "--db", url], capture_output=True, text=True, check=False)
    assert out.returncode == 1
    assert out.stderr.startswith("tr7-collector: database unavailable:"), out.stderr
    assert "Traceback" not in out.stderr


def test_a_database_url_of_another_engine_or_driver_is_one_line(tmp_path: Path) -> None:
    """Only SQLite and PostgreSQL through psycopg 3 (what the collector is tested on); the
    password of the URL is never echoed."""
    for url in ("postgresql+psycopg2://u:secret@db/tr7", "mysql://u:secret@db/tr7"):
        out = subprocess.run([sys.executable, "-m", "collector.cli", "migrate", "--data-dir", str(tmp_path),
                              "--db", url], capture_output=True, text=True, check=False)
        assert out.returncode == 1, out
        scheme = url.partition("://")[0]
        assert out.stderr == (
            f"tr7-collector: --db {scheme}://... is not supported: give sqlite:///PATH or "
            "postgresql://... (PostgreSQL through psycopg 3)\n"
        ), out.stderr
    for url in ("postgresql:/u:secret@db/tr7", "postgresql//u:secret@db/tr7", "foo://u:secret@db/tr7",
                "postgresql://u:secret/tr7", "postgresql://u:sec@ret@127.0.0.1/tr7"):
        out = subprocess.run([sys.executable, "-m", "collector.cli", "migrate", "--data-dir", str(tmp_path),
                              "--db", url], capture_output=True, text=True, check=False)
        assert out.returncode == 1 and out.stderr.count("\n") == 1, out
        assert "secret" not in out.stderr and "ret@" not in out.stderr, out.stderr
        assert "Traceback" not in out.stderr, out.stderr
    for url in (f"sqlite:///{tmp_path / 'c.db'}", f"sqlite+pysqlite:///{tmp_path / 'c.db'}",
                f"postgres://nobody@127.0.0.1:{_closed_port()}/tr7", "postgresql+psycopg://u@db/tr7"):
        assert Settings(tmp_path / "d", url, "test").engine is not None  # accepted (not connected yet)


def test_common_options_before_or_after_the_command(tmp_path: Path) -> None:
    """`tr7-collector --data-dir D agent list` (as the README writes it) and `... agent list --data-dir D`."""

    def agents(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "collector.cli", *args], capture_output=True, text=True,
                              check=False)

    before, after = tmp_path / "before", tmp_path / "after"
    assert agents("--data-dir", str(before), "agent", "list").returncode == 0
    assert agents("agent", "list", "--data-dir", str(after)).returncode == 0
    assert (before / "collector.db").exists() and (after / "collector.db").exists()
    # Given in both places, the command's own option wins (the more specific one).
    both, unused = tmp_path / "both", tmp_path / "unused"
    assert agents("--data-dir", str(unused), "agent", "list", "--data-dir", str(both)).returncode == 0
    assert (both / "collector.db").exists() and not unused.exists()


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "collector.cli", *args], capture_output=True, text=True,
                          check=False, env=env)


def test_commands_use_the_database_of_the_services_environment_file(tmp_path: Path) -> None:
    """The packaged service reads TR7_COLLECTOR_DB from /etc/tr7-collector/collector.env; an
    operator's command in a shell, without --db, uses the same database (it made an empty SQLite
    one of its own in the data dir)."""
    import os

    elsewhere = tmp_path / "service.db"
    conf = tmp_path / "collector.env"
    conf.write_text(f"# as packaged\nTR7_COLLECTOR_LISTEN=127.0.0.1:8080\nTR7_COLLECTOR_DB=\"sqlite:///{elsewhere}\"\n")
    env = {**os.environ, "TR7_COLLECTOR_ENV_FILE": str(conf)}
    data = tmp_path / "data"
    assert _cli("--data-dir", str(data), "agent", "list", env=env).returncode == 0
    assert elsewhere.exists() and not (data / "collector.db").exists()
    # The environment (and --db) still come first.
    mine = tmp_path / "mine.db"
    out = _cli("--data-dir", str(data), "--db", f"sqlite:///{mine}", "agent", "list", env=env)
    assert out.returncode == 0
    assert mine.exists()


def test_a_data_dir_with_a_key_but_no_database_is_not_given_a_new_one(tmp_path: Path) -> None:
    data = tmp_path / "data"
    service_db = f"sqlite:///{tmp_path / 'service.db'}"
    assert _cli("--data-dir", str(data), "--db", service_db, "agent", "list").returncode == 0  # the service
    out = _cli("--data-dir", str(data), "agent", "list")  # an operator who forgot where the database is
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.startswith(f"tr7-collector: {data} holds a collector key but no database"), out.stderr
    assert "--db" in out.stderr and not (data / "collector.db").exists()


def test_a_listen_address_without_a_port_is_one_line(tmp_path: Path) -> None:
    out = _cli("serve", "--data-dir", str(tmp_path), "--listen", "127.0.0.1")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "listen address '127.0.0.1'" in out.stderr and "HOST:PORT" in out.stderr


def _opened(tmp_path: Path) -> tuple[Path, str, Settings]:
    """A collector's data dir with its SQLite database, opened (key, origin, schema)."""
    data = tmp_path / "data"
    url = f"sqlite:///{data / 'collector.db'}"
    st = Settings(data, url, "collector.test")
    st.open()
    return data, url, st


def _month_of_beats(settings, tools, n: int):
    agent = tools.Agent()
    tools.enrol(settings, "acme", agent, 0)
    month = previous_month(month_of(int(time.time())))
    t0 = month_bounds(month)[0] + 10 * 86400
    return month, [agent.beat(t0 + 60 * i, {"TR7-1": "running"}) for i in range(n)]


def test_backup_while_serving_then_restore_and_a_lost_key(tmp_path: Path, tools) -> None:
    """`backup` copies every committed heartbeat (also those still in the -wal file) with the key
    and origin; a data dir that lost its key gets no new one for a database that has one."""

    data, url, st = _opened(tmp_path)
    _month, beats = _month_of_beats(st, tools, 30)
    assert {r["status"] for r in ingest_lines(st.engine, beats)} == {"accepted"}
    # the engine stays open (as the service does): the heartbeats are in collector.db-wal
    assert (data / "collector.db-wal").stat().st_size > 0
    out = _cli("backup", "--data-dir", str(data), "--db", url, "--out", str(tmp_path / "bk"))
    assert out.returncode == 0, out.stderr
    assert "key and origin:" in out.stdout
    restored = tmp_path / "restored"
    restored.mkdir()
    for name in ("collector.db", "collector.key", "origin"):
        shutil.copy2(tmp_path / "bk" / name, restored / name)
    back = Settings(restored, f"sqlite:///{restored / 'collector.db'}", None)
    with db.read_conn(back.open()) as c:
        assert c.execute(sa.select(sa.func.count()).select_from(s.leaves)).scalar() == 30
    assert _cli("backup", "--data-dir", str(data), "--db", url, "--out", str(tmp_path / "bk")).returncode == 1
    # the key lost: refused before a new one is written
    (restored / "collector.key").unlink()
    lost = _cli("agent", "list", "--data-dir", str(restored))
    assert lost.returncode == 1 and "has no collector.key" in lost.stderr and "Traceback" not in lost.stderr
    assert not (restored / "collector.key").exists()


def test_a_database_of_a_newer_release_is_refused_in_one_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert _cli("migrate", "--data-dir", str(data)).returncode == 0
    with sqlite3.connect(data / "collector.db") as c:
        c.execute("UPDATE alembic_version SET version_num = '0099_future'")
    out = _cli("agent", "list", "--data-dir", str(data))
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert "revision '0099_future', which this tr7-collector does not know" in out.stderr


def _older_backup_restored(tmp_path: Path, tools) -> tuple[Path, str]:
    """A data dir whose database was put back to a backup 20 heartbeats behind its marks."""
    data, url, st = _opened(tmp_path)
    month, beats = _month_of_beats(st, tools, 40)
    ingest_lines(st.engine, beats[:20])
    assert _cli("backup", "--data-dir", str(data), "--db", url, "--out", str(tmp_path / "bk")).returncode == 0
    ingest_lines(st.engine, beats[20:])  # accepted after the backup
    st.engine.dispose()
    from collector import highwater

    highwater._flush_all()  # what the process would write within a second, or at its exit
    for extra in ("collector.db-wal", "collector.db-shm"):
        (data / extra).unlink(missing_ok=True)
    shutil.copy2(tmp_path / "bk" / "collector.db", data / "collector.db")
    return data, month


def test_an_older_backup_restored_under_the_data_dir_is_refused_until_accepted(tmp_path: Path, tools) -> None:
    """Heartbeats accepted after the backup would be lost and their leaf indexes signed again with
    other content: the data directory remembers how far each log went."""
    data, month = _older_backup_restored(tmp_path, tools)
    refused = _cli("agent", "list", "--data-dir", str(data))
    assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr
    assert "the database is behind what" in refused.stderr and "accept-restore" in refused.stderr
    assert f"acme/{month}: 40 seen, 20 in the database" in refused.stderr
    assert _cli("serve", "--data-dir", str(data), "--listen", "127.0.0.1:1").returncode == 1
    accepted = _cli("accept-restore", "--data-dir", str(data))
    assert accepted.returncode == 0 and f"acme/{month}: 40 seen, 20 in the database" in accepted.stdout
    assert _cli("agent", "list", "--data-dir", str(data)).returncode == 0
    assert _cli("accept-restore", "--data-dir", str(data)).stdout.startswith("the database holds every log")


def test_every_host_marks_what_the_others_appended_and_refuses_their_loss(
    tmp_path: Path, tools, monkeypatch
) -> None:
    """Hosts on one database, each with its data directory: a serving process reads every log's
    size every WATCH_EVERY s, whoever appended it. A host's marks held only its own commits, so
    after a restore the host that had seen least started without a word, took new heartbeats
    into leaf indexes already signed, and the others then started too (a forked tree)."""
    import json

    from fastapi.testclient import TestClient

    from collector import highwater
    from collector.server import create_app

    data_a, url, st_a = _opened(tmp_path)
    month, beats = _month_of_beats(st_a, tools, 40)
    ingest_lines(st_a.engine, beats[:20])
    backup = _cli("backup", "--data-dir", str(data_a), "--db", url, "--out", str(tmp_path / "bk"))
    assert backup.returncode == 0, backup.stderr
    data_b = tmp_path / "host-b"  # another host: the key and origin copied, as the docs say
    data_b.mkdir()
    for name in ("collector.key", "origin"):
        shutil.copy2(data_a / name, data_b / name)
    monkeypatch.setattr(highwater, "WATCH_EVERY", 0.05)
    with TestClient(create_app(Settings(data_b, url, "collector.test"))):  # host B serves, idle
        ingest_lines(st_a.engine, beats[20:])  # through host A only
        marked = data_b / highwater.FILE
        for _ in range(200):
            marks = json.loads(marked.read_text()) if marked.exists() else {}
            if any(m.get(f"acme/{month}") == 40 for m in marks.values()):
                break
            time.sleep(0.05)
        else:
            raise AssertionError(f"host B never marked what host A appended: {marks}")
    st_a.engine.dispose()
    for extra in ("collector.db-wal", "collector.db-shm"):
        (data_a / extra).unlink(missing_ok=True)
    shutil.copy2(tmp_path / "bk" / "collector.db", data_a / "collector.db")  # the restore
    refused = _cli("agent", "list", "--data-dir", str(data_b), "--db", url)
    assert refused.returncode == 1 and f"acme/{month}: 40 seen, 20 in the database" in refused.stderr


def test_typical_file_mistakes_are_one_line(tmp_path: Path) -> None:
    data = ["--data-dir", str(tmp_path / "data")]
    bad_json, bad_yaml = tmp_path / "bad.json", tmp_path / "bad.yaml"
    bad_json.write_text("{bad")
    bad_yaml.write_text("provider: [\n")
    for args, said in (
        (["apply", str(tmp_path / "catalog.yml")], "catalog.yml: No such file or directory"),
        (["apply", str(bad_json)], "bad.json:1:2: not JSON: Expecting property name"),
        (["apply", str(bad_yaml)], "bad.yaml:2:1: not YAML:"),
        (["import", "/nonexistent.jws"], "/nonexistent.jws: No such file or directory"),
    ):
        out = _cli(*args, *data)
        assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
        assert out.stderr.startswith("tr7-collector: ") and said in out.stderr, out.stderr


def test_key_prints_the_verifier_key_bundles_carry(tmp_path: Path) -> None:
    data = tmp_path / "data"
    out = _cli("key", "--data-dir", str(data), "--origin", "collector.test")
    assert out.returncode == 0
    from protocol.note import NoteVerifier

    assert NoteVerifier.from_vkey(out.stdout.strip()).name == "collector.test"  # what --collector-key takes
    again = _cli("key", "--data-dir", str(data))
    assert again.stdout == out.stdout  # the same key, kept in the data directory


def test_key_rotate_prints_the_new_key_and_the_statement_history_keeps(tmp_path: Path) -> None:
    import json

    from protocol.note import NoteVerifier, open_note

    data = tmp_path / "data"
    old = _cli("key", "--data-dir", str(data), "--origin", "collector.test").stdout.strip()
    out = _cli("key", "rotate", "--data-dir", str(data))
    assert out.returncode == 0, out.stderr
    lines = out.stderr.splitlines()
    new = lines[-5].removeprefix("new checkpoint key: ")
    assert lines[-4] == f"retired: {old}" and new != old
    statement = out.stdout  # the statement alone: `key rotate > statement-1`, then tr7-audit handover
    assert statement.startswith("tr7-collector key rotation\n")
    (tmp_path / "statement-1").write_text(statement)
    handed = subprocess.run([sys.executable, "-m", "audit.cli", "handover", "--collector-key", old,
                             str(tmp_path / "statement-1")], capture_output=True, text=True, check=False)
    assert handed.returncode == 0 and handed.stdout.strip() == new, handed.stderr
    for vkey in (old, new):
        assert open_note(statement, [NoteVerifier.from_vkey(vkey)])  # any signed-note tool can check it
    assert _cli("key", "--data-dir", str(data)).stdout.strip() == new
    history = json.loads(_cli("key", "history", "--data-dir", str(data)).stdout)
    assert [(h["key"], h["statement"]) for h in history] == [(old, statement)]
    bad = _cli("key", "turn", "--data-dir", str(data))
    assert bad.returncode == 2 and "invalid choice: 'turn'" in bad.stderr


def test_a_backup_from_before_the_marks_restored_is_held_to_them(tmp_path: Path, tools) -> None:
    """A backup taken before this release has no database id: restored, it is held to the marks of
    the one database the data directory knew (it passed as a new database before)."""
    from collector import highwater

    data, _url, st = _opened(tmp_path)
    month, beats = _month_of_beats(st, tools, 40)
    ingest_lines(st.engine, beats[:20])
    st.engine.dispose()
    old = tmp_path / "old.db"
    shutil.copy2(data / "collector.db", old)
    c = sqlite3.connect(old)  # what a backup of the release before looks like: no id
    with c:
        c.execute("DELETE FROM meta WHERE key = ?", (highwater.DATABASE_ID,))
    c.close()  # the change is in old.db itself, not in a -wal beside it
    ingest_lines(st.engine, beats[20:])
    st.engine.dispose()
    highwater._flush_all()
    for extra in ("collector.db-wal", "collector.db-shm"):
        (data / extra).unlink(missing_ok=True)
    shutil.copy2(old, data / "collector.db")
    refused = _cli("agent", "list", "--data-dir", str(data))
    assert refused.returncode == 1 and f"acme/{month}: 40 seen, 20 in the database" in refused.stderr


def test_a_commit_between_reading_the_marks_and_the_database_is_no_rewind(
    tmp_path: Path, tools, monkeypatch
) -> None:
    """Another process commits (and marks) while a command opens: the marks are read first, so
    the database is never found behind them (it was, ~1 open in 1,000 under load)."""
    from collector import highwater

    data, _url, st = _opened(tmp_path)
    _month, beats = _month_of_beats(st, tools, 20)
    ingest_lines(st.engine, beats[:10])
    highwater._flush_all()
    real = highwater._sizes

    def another_process_commits_first(conn):
        other = Settings(data, st.db_url, "collector.test")
        ingest_lines(other.engine, beats[10:])  # committed, and marked at once
        highwater._Mark(data, highwater.database_id(conn, create=False)).write(
            real(other.engine.connect()), replace=False)
        return real(conn)

    monkeypatch.setattr(highwater, "_sizes", another_process_commits_first)
    fresh = Settings(data, st.db_url, "collector.test")
    fresh.open(migrate=False)  # read marks (10), then the database (20): no refusal


def test_a_commit_after_the_snapshot_began_is_no_rewind(tmp_path: Path, tools, monkeypatch) -> None:
    """The database's snapshot is fixed by the open's first statement (its id), not by reading
    its sizes: another process's commit and mark right after that statement made a false
    "restored from an older backup" (~1 open in 1,700 under ingest on PostgreSQL)."""
    from collector import highwater

    data, _url, st = _opened(tmp_path)
    _month, beats = _month_of_beats(st, tools, 20)
    ingest_lines(st.engine, beats[:10])
    highwater._flush_all()
    real = highwater.database_id

    def then_another_process_commits(conn, create):
        got = real(conn, create)
        other = Settings(data, st.db_url, "collector.test")
        ingest_lines(other.engine, beats[10:])
        with other.engine.connect() as c:
            highwater._Mark(data, got).write(highwater._sizes(c), replace=False)
        return got

    monkeypatch.setattr(highwater, "database_id", then_another_process_commits)
    Settings(data, st.db_url, "collector.test").open(migrate=False)  # marks (10) read first: no refusal


def test_backup_of_nothing_makes_nothing(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    out = _cli("backup", "--data-dir", str(empty), "--out", str(tmp_path / "bk"))
    assert out.returncode == 1 and "holds no collector.key" in out.stderr and "Traceback" not in out.stderr
    assert not (empty / "collector.key").exists() and not (tmp_path / "bk").exists()
    assert _cli("migrate", "--data-dir", str(empty)).returncode == 0
    other = f"sqlite:///{tmp_path / 'other.db'}"  # a wrong --db
    out = _cli("backup", "--data-dir", str(empty), "--db", other, "--out", str(tmp_path / "bk"))
    assert out.returncode == 1 and "holds no collector schema" in out.stderr
    assert not (tmp_path / "bk").exists()


def test_a_sibling_writing_the_key_while_this_one_looks_is_no_lost_key(tmp_path: Path, monkeypatch) -> None:
    """Processes starting together on a new data dir: one writes the key, then claims the
    database; another that saw no key file, then the claim, must look at the file again (it
    refused as if the key were lost, about once in CI's runs on PostgreSQL)."""
    import contextlib

    from collector import settings as settings_mod

    data, url, _st = _opened(tmp_path)
    key = (data / "collector.key").read_bytes()
    (data / "collector.key").unlink()  # as the sibling had not written it yet
    real = settings_mod.db.read_conn

    @contextlib.contextmanager
    def sibling_writes_the_key_meanwhile(engine):
        (data / "collector.key").write_bytes(key)
        (data / "collector.key").chmod(0o600)
        with real(engine) as conn:
            yield conn

    monkeypatch.setattr(settings_mod.db, "read_conn", sibling_writes_the_key_meanwhile)
    Settings(data, url, "collector.test").open(migrate=False, highwater=False)


def test_serve_trusts_the_forwarded_client_of_the_proxies_it_is_told(tmp_path: Path) -> None:
    """A load balancer on another machine: uvicorn trusts X-Forwarded-For only from 127.0.0.1, so
    every user was the balancer's address (one attacker's failures throttled everyone's sign-in)
    and https sign-ins got a cookie without Secure. --forwarded-allow-ips names the proxies."""
    import os
    import socket

    import httpx

    def peer_seen(*extra: str) -> str:
        with socket.socket() as so:
            so.bind(("127.0.0.1", 0))
            port = so.getsockname()[1]
        log = tmp_path / f"serve{len(extra)}.log"
        with log.open("w") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "collector.cli", "serve", "--data-dir", str(tmp_path / "data"),
                 "--listen", f"127.0.0.1:{port}", *extra],
                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "TR7_ACCOUNTS_TICK": "0"})
        try:
            # from 127.0.0.2, a proxy that is not on 127.0.0.1
            http = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"), timeout=5)
            for _ in range(300):
                try:
                    r = http.post(f"http://127.0.0.1:{port}/v1/heartbeats", content=b"x\n",
                                  headers={"Content-Type": "text/plain", "X-Forwarded-For": "203.0.113.9"})
                    break
                except httpx.TransportError:
                    time.sleep(0.1)
            assert r.status_code == 200 and r.json()["results"][0]["status"] == "rejected"
        finally:
            proc.terminate()
            proc.wait(30)
        return next(line for line in log.read_text().splitlines() if "event=ingest " in line)

    assert "peer=127.0.0.2 " in peer_seen()
    assert "peer=203.0.113.9 " in peer_seen("--forwarded-allow-ips", "127.0.0.2")


def test_help_says_what_the_program_is_not_a_module_docstring() -> None:
    """A refactoring moved the parser to collector/cliargs.py and --help opened with that module's
    docstring ("its argument types and its parser"). Found by a review."""
    from collector.cliargs import build_parser

    text = build_parser().format_help()
    assert "TR7 metering collector" in text and "docstring" not in text and "parser" not in text
    for command in ("serve", "apply", "bill", "close", "export", "backup", "prune"):
        assert command in text


def test_a_damaged_or_unreadable_mark_is_refused_not_taken_for_no_marks(tmp_path: Path, tools) -> None:
    """An empty highwater.json (a power cut: it was not synced) or one the service's user cannot read
    (root's, made under umask 027) read as "no marks": an older backup was served without a word.
    Found by an ops review."""
    import os

    data, month = _older_backup_restored(tmp_path, tools)
    marks = data / "highwater.json"
    assert marks.stat().st_mode & 0o777 == 0o600  # written whole and synced, as the key
    marks.write_text("")
    refused = _cli("agent", "list", "--data-dir", str(data))
    assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr
    assert "highwater.json is damaged" in refused.stderr and "accept-restore" in refused.stderr
    accepted = _cli("accept-restore", "--data-dir", str(data))  # the way past it, said in the message
    assert accepted.returncode == 0, accepted.stderr
    assert "could not be read, so what this database lacks is unknown" in accepted.stdout
    assert _cli("agent", "list", "--data-dir", str(data)).returncode == 0
    assert f'"acme/{month}": 20' in marks.read_text()
    if os.geteuid() == 0:  # root reads anything: hold this process to the file's mode instead
        run = ["setpriv", "--bounding-set=-all", "--inh-caps=-all", sys.executable]
        os.chown(marks, 65534, 65534)
    else:
        run = [sys.executable]
    marks.chmod(0o000)
    out = subprocess.run([*run, "-m", "collector.cli", "agent", "list", "--data-dir", str(data)],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 1 and "highwater.json cannot be read" in out.stderr, out.stderr


def test_marks_root_writes_into_the_services_data_dir_stay_the_services(tmp_path: Path, tools) -> None:
    """An operator's `sudo tr7-collector import` made highwater.json and its lock root's: the service
    never wrote its marks again, and a later restore of an older backup was served. Found by an ops
    review."""
    import os

    from collector import highwater

    data, _url, st = _opened(tmp_path)
    if os.geteuid() != 0:  # only root can leave files of its own in another user's directory
        assert highwater.owner_for(data) is None
        return
    for path in [data, *data.iterdir()]:
        os.chown(path, 65534, 65534)
    assert highwater.owner_for(data) == (65534, 65534)
    _month, beats = _month_of_beats(st, tools, 5)
    ingest_lines(st.engine, beats)  # as root, as `sudo tr7-collector import` does
    st.engine.dispose()
    highwater._flush_all()
    for name in ("highwater.json", "highwater.lock"):
        assert ((data / name).stat().st_uid, (data / name).stat().st_gid) == (65534, 65534), name


def test_a_backup_that_runs_out_of_room_says_so_and_leaves_nothing(tmp_path: Path, tools) -> None:
    """On a full disk `backup` printed a traceback and left the key and half a database without
    backup.json, which the next attempt refused as "not empty". The room is cut here by the file
    size limit (RLIMIT_FSIZE), which fails the write as a full disk does. Found by an ops review."""
    import resource
    import signal

    data, _url, st = _opened(tmp_path)
    _month, beats = _month_of_beats(st, tools, 200)
    ingest_lines(st.engine, beats)
    st.engine.dispose()
    assert (data / "collector.db").stat().st_size > 400_000

    def little_room() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails (EFBIG) instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    out = tmp_path / "bk"
    cmd = [sys.executable, "-m", "collector.cli", "backup", "--data-dir", str(data), "--out", str(out)]
    cut = subprocess.run(cmd, capture_output=True, text=True, check=False, preexec_fn=little_room)
    assert cut.returncode == 1 and "Traceback" not in cut.stderr, cut.stderr
    assert f"backup into {out} failed" in cut.stderr and "nothing of it is kept" in cut.stderr
    assert not out.exists()
    assert _cli("backup", "--data-dir", str(data), "--out", str(out)).returncode == 0  # with room: done
    assert (out / "backup.json").exists()


def test_a_close_outrun_by_other_closes_at_every_attempt_is_one_line(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    """write_tx gives up after its attempts when other processes' closes keep changing what a
    close read before its locks (db.Retry): a traceback; now one line, and nothing changed."""
    from collector import accounting, cli

    def outrun(*_a: object, **_k: object) -> None:
        raise db.Retry("closed months of acme changed while 2026-10's close waited for its logs")

    monkeypatch.setattr(accounting, "close", outrun)
    monkeypatch.setattr(db.time, "sleep", lambda _s: None)
    data = str(tmp_path / "d")
    assert cli.main(["migrate", "--data-dir", data, "--origin", "c.test"]) == 0
    capsys.readouterr()
    assert cli.main(["close", "--data-dir", data, "--provider", "acme", "--month", "2026-10"]) == 1
    err = capsys.readouterr().err
    assert err == ("tr7-collector: closed months of acme changed while 2026-10's close waited for its logs; "
                   "nothing was changed: run it again\n")


def test_backup_json_describes_the_copy_while_the_service_appends(tmp_path: Path) -> None:
    """backup.json's log sizes were read from the live database before the copy was taken: with the
    service appending meanwhile, they described less than the copy held. Read from the copy now."""
    import threading

    from collector.custody import backup

    data, _url, st = _opened(tmp_path)
    with sqlite3.connect(data / "collector.db") as conn:
        conn.execute(f"INSERT INTO {s.logs.name} (provider, month, size) VALUES ('acme', '2026-11', 0)")
    stop, started = threading.Event(), threading.Event()

    def appending() -> None:  # the service, as far as the sizes go: one commit after another
        with sqlite3.connect(data / "collector.db", timeout=30) as conn:
            while not stop.is_set():
                conn.execute(f"UPDATE {s.logs.name} SET size = size + 1")
                conn.commit()
                started.set()

    writer = threading.Thread(target=appending)
    writer.start()
    try:
        assert started.wait(10)
        for i in range(20):
            out = tmp_path / f"bk{i}"
            backup(st, out)
            said = json.loads((out / "backup.json").read_text())["logs"]
            with sqlite3.connect(out / "collector.db") as copy:
                rows = copy.execute(f"SELECT provider, month, size FROM {s.logs.name}")
                held = {f"{p}/{m}": n for p, m, n in rows}
            assert said == held and held["acme/2026-11"] > 0
    finally:
        stop.set()
        writer.join(10)
