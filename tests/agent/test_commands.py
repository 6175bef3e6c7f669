"""check, enroll, status, export through the real console script."""

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from conftest import AGENT, agent_env, enrolled_agent, run_cli, write_config

from protocol.heartbeat import parse_unverified
from protocol.keys import load_private_key


def test_check_json_shape_and_failure_exit(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "a.toml", {"state_dir": str(tmp_path / "s")},
                       [{"name": "good", "platform": "kvm", "instances": 2},
                        {"name": "bad", "platform": "kvm", "fail": "connection refused"},
                        {"name": "slow", "platform": "kvm", "delay": 30, "timeout": 0.5}])
    res = run_cli("check", "--config", str(cfg), "--json")
    assert res.returncode == 1
    out = json.loads(res.stdout)
    assert set(out) == {"polls", "observations", "diagnostics"}
    assert set(out["diagnostics"]) <= {"bad", "slow"}  # the whole reason, where one was given
    assert out["polls"] == [
        {"adapter": "good", "platform": "kvm", "ok": True, "error": None},
        {"adapter": "bad", "platform": "kvm", "ok": False, "error": "connection refused"},
        {"adapter": "slow", "platform": "kvm", "ok": False, "error": "timeout after 0.5s"}]
    assert [o["instance"] for o in out["observations"]] == ["tr7-00000", "tr7-00001"]
    assert set(out["observations"][0]) == {"instance", "adapter", "vm", "host", "state", "capacity"}
    assert not (tmp_path / "s" / "spool.db").exists()  # check signs and spools nothing
    ok = write_config(tmp_path / "b.toml", {}, [{"name": "good", "platform": "kvm"}])
    res = run_cli("check", "--config", str(ok))
    assert res.returncode == 0 and "good" in res.stdout and "tr7-00001" in res.stdout


def test_enroll_idempotent_and_reused_token_refused(tmp_path: Path, make_collector) -> None:
    collector = make_collector(tokens=["tok-1"])
    cfg = enrolled_agent(tmp_path, collector, token="tok-1")
    key_file = tmp_path / "state-a" / "agent.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    kid = load_private_key(key_file).kid
    again = run_cli("enroll", "--config", str(cfg), "--token", "tok-1")
    assert again.returncode == 0, again.stderr
    assert load_private_key(key_file).kid == kid  # same key kept
    assert collector.query("SELECT kid FROM agents") == [(kid,)]
    other = write_config(tmp_path / "b.toml", {"collector": collector.url, "state_dir": str(tmp_path / "b")},
                         [])
    res = run_cli("enroll", "--config", str(other), "--token", "tok-1")
    assert res.returncode == 1
    assert "enrolment token already used by another key" in res.stderr
    res = run_cli("enroll", "--config", str(other), "--token", "nope")
    assert res.returncode == 1 and "unknown or expired" in res.stderr


def test_a_key_or_enrolment_write_killed_before_its_rename_leaves_no_file_for_good(
    tmp_path: Path, make_collector
) -> None:
    """agent.key and enrollment.json are written through a temporary file of the writer's own; one
    killed before its rename left agent.key.<pid>.<hex>.tmp (a private key's copy) for good. A
    start removes those of dead processes only: a live one may be about to rename its own."""
    collector = make_collector(tokens=["tok-1"])
    cfg = enrolled_agent(tmp_path, collector, token="tok-1")
    state = tmp_path / "state-a"
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = [state / f"{name}.{dead.pid}.0badf00d.tmp" for name in ("agent.key", "enrollment.json")]
    kept = [state / f"agent.key.{os.getppid()}.0badf00d.tmp", state / "enrollment.json.notes.tmp"]
    for f in stale + kept:
        f.write_text("x")
        os.utime(f, (time.time() - 120, time.time() - 120))  # older than a rename takes (DEAD_AGE)
    again = run_cli("enroll", "--config", str(cfg), "--token", "tok-1")
    assert again.returncode == 0, again.stderr
    assert [f.exists() for f in stale + kept] == [False, False, True, True]


def test_status_and_export_without_collector(tmp_path: Path, make_collector) -> None:
    collector = make_collector()
    cfg = enrolled_agent(tmp_path, collector)
    collector.kill()  # no network path: heartbeats stay in the spool
    proc = subprocess.Popen([str(AGENT), "run", "--config", str(cfg)], env=agent_env(),
                            stderr=subprocess.DEVNULL)
    state = tmp_path / "state-a"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            st = json.loads(run_cli("status", "--config", str(cfg), "--json").stdout)
            if st["spool_depth"] >= 3:
                break
            time.sleep(0.5)
    finally:
        proc.terminate()
        proc.wait(30)
    assert proc.returncode == 0
    st = json.loads(run_cli("status", "--config", str(cfg), "--json").stdout)
    for field in ("kid", "last_poll", "last_seq", "last_shipped_seq", "spool_depth", "oldest_unshipped_age_s",
                  "spool_bytes", "rejected", "clock_events", "collector"):
        assert field in st
    assert st["kid"] == load_private_key(state / "agent.key").kid
    assert st["collector"]["reachable"] is False and st["last_shipped_seq"] is None
    assert st["spool_depth"] == st["last_seq"] >= 3 and st["oldest_unshipped_age_s"] > 0
    out = tmp_path / "export.jws"
    res = run_cli("export", "--config", str(cfg), "--out", str(out))
    assert res.returncode == 0, res.stderr
    lines = out.read_text().splitlines()
    assert [parse_unverified(t).seq for t in lines] == list(range(1, st["last_seq"] + 1))
    # Export does not delete: the spool still holds them for shipping later.
    st2 = json.loads(run_cli("status", "--config", str(cfg), "--json").stdout)
    assert st2["spool_depth"] == st["spool_depth"]


def test_unit_credential_names_work_from_a_shell(tmp_path: Path, make_collector) -> None:
    """`tr7_<file>` names the file the unit loads from /etc/tr7-agent/credentials; `check` and
    `enroll` run by the operator (no $CREDENTIALS_DIRECTORY) read the same file."""
    collector = make_collector(tokens=["tok-1"])
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "collector-token").write_text("bearer-secret\n")
    cfg = write_config(tmp_path / "a.toml", {"collector": collector.url, "state_dir": str(tmp_path / "s"),
                                            "token_file": "tr7_collector-token"}, [])
    without = run_cli("enroll", "--config", str(cfg), "--token", "tok-1",
                      env=agent_env(TR7_AGENT_CREDENTIALS=str(tmp_path / "empty")))
    assert without.returncode == 1 and "cannot read secret file tr7_collector-token" in without.stderr
    assert str(tmp_path / "empty" / "collector-token") in without.stderr  # where the file should go
    res = run_cli("enroll", "--config", str(cfg), "--token", "tok-1",
                  env=agent_env(TR7_AGENT_CREDENTIALS=str(creds)))
    assert res.returncode == 0, res.stderr


def test_enroll_against_something_that_is_not_the_collector(tmp_path: Path) -> None:
    """A 200 that is no enrolment (a proxy's page, another service at the URL) is named, not a
    traceback; neither is an enrollment.json cut short, read by status. Found by a review."""
    import http.server
    import threading

    bodies = iter([b"<html>Welcome</html>", b"[1, 2]"])

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            body = next(bodies)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        cfg = write_config(tmp_path / "a.toml", {"collector": url, "state_dir": str(tmp_path / "s")}, [])
        for shown in ("'<html>Welcome</html>'", "'[1, 2]'"):
            res = run_cli("enroll", "--config", str(cfg), "--token", "T")
            assert res.returncode == 1 and "Traceback" not in res.stderr
            assert "answered 200 with no enrolment" in res.stderr and shown in res.stderr
    finally:
        server.shutdown()
    (tmp_path / "s" / "enrollment.json").write_text('{"kid": ')
    res = run_cli("status", "--config", str(cfg), "--json")
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "enrollment.json: unreadable" in json.loads(res.stdout)["enrollment_error"]


def test_status_and_enroll_name_what_is_unusable(tmp_path: Path) -> None:
    """status said all was well (exit 0) with a state directory that is a file; enroll gave a
    traceback for an emptied agent.key. Found by a review."""
    a_file = tmp_path / "not-a-dir"
    a_file.write_text("x")
    cfg = write_config(tmp_path / "a.toml", {"state_dir": str(a_file)}, [])
    res = run_cli("status", "--config", str(cfg), "--json")
    assert res.returncode == 1 and "is not a directory" in json.loads(res.stdout)["state_error"]
    state = tmp_path / "s"
    state.mkdir()
    (state / "agent.key").write_bytes(b"")
    (state / "agent.key").chmod(0o600)
    cfg = write_config(tmp_path / "b.toml", {"state_dir": str(state), "collector": "http://127.0.0.1:9"}, [])
    res = run_cli("enroll", "--config", str(cfg), "--token", "t")
    assert res.returncode == 1 and "is not an agent key" in res.stderr and "Traceback" not in res.stderr


@contextlib.contextmanager
def _denied(state: Path) -> Iterator[None]:
    """This process cannot read ``state``: as root (which reads anything) by acting as nobody."""
    if os.geteuid() == 0:
        os.seteuid(65534)
        try:
            yield
        finally:
            os.seteuid(0)
    else:
        state.chmod(0)
        try:
            yield
        finally:
            state.chmod(0o700)


def test_status_and_export_from_a_shell_that_cannot_read_the_state(tmp_path: Path, capsys) -> None:
    """The service's state directory is mode 0700 of user tr7-agent: `tr7-agent status` from an
    operator's own shell gave a PermissionError traceback; export an unclear sqlite message."""
    from agent import commands
    from agent.config import load_config

    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "spool.db").write_bytes(b"")
    cfg = load_config(write_config(tmp_path / "a.toml", {"state_dir": str(state),
                                                         "collector": "http://127.0.0.1:9"}, []))
    with _denied(state):
        code = commands.status(cfg, True)
        out = json.loads(capsys.readouterr().out)
        assert code == 1 and "permission denied" in out["state_error"] and out["kid"] is None
        assert commands.export(cfg, tmp_path / "x.jws") == 1
        assert "permission denied: run this as root or as the service user" in capsys.readouterr().err


def test_status_and_export_before_the_agent_ever_ran(tmp_path: Path) -> None:
    """No state directory yet: status said nothing of it (exit 0, every field empty); export made
    a spool.db owned by whoever ran it, where the service user must write it later."""
    missing = tmp_path / "never"
    cfg = write_config(tmp_path / "a.toml", {"state_dir": str(missing), "collector": "http://127.0.0.1:9"},
                       [])
    res = run_cli("status", "--config", str(cfg))
    assert res.returncode == 1 and res.stdout.startswith("state_error")
    assert "does not exist: the agent has not run with this configuration" in res.stdout
    missing.mkdir()
    res = run_cli("export", "--config", str(cfg), "--out", str(tmp_path / "x.jws"))
    assert res.returncode == 1 and "no spool at" in res.stderr
    assert not (missing / "spool.db").exists()


def test_enroll_as_root_gives_the_key_to_the_state_directorys_owner(tmp_path: Path, make_collector) -> None:
    """README step 4 runs enroll as root (which reads /etc/tr7-agent/credentials, root's): a
    root-owned agent.key stopped the service at every start, in a restart loop."""
    if os.geteuid() != 0:  # the README's test command runs as root (its set-up installs with apt)
        import pytest

        pytest.skip("needs root, as the README's test command has")
    collector = make_collector(tokens=["tok-1"])
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.chown(state, 65534, 65534)  # the service user's, as the package's postinst makes it
    tmp_path.chmod(0o755)
    cfg = write_config(tmp_path / "a.toml", {"state_dir": str(state), "collector": collector.url}, [])
    res = run_cli("enroll", "--config", str(cfg), "--token", "tok-1")
    assert res.returncode == 0, res.stderr
    for name in ("agent.key", "enrollment.json"):
        st = (state / name).stat()
        assert (st.st_uid, st.st_gid) == (65534, 65534), name
    assert (state / "agent.key").stat().st_mode & 0o777 == 0o600
    # a link the directory's owner plants to a file of root's is never followed: not handed over
    from agent.commands import give_to_state_owner

    roots = tmp_path / "root-only"
    roots.write_text("secret\n")
    roots.chmod(0o600)
    (state / "enrollment.json").unlink()
    (state / "enrollment.json").symlink_to(roots)
    give_to_state_owner(state, state / "enrollment.json")
    assert roots.stat().st_uid == 0 and (state / "enrollment.json").is_symlink()


def test_a_credential_this_user_cannot_read_says_what_to_do(tmp_path: Path, monkeypatch) -> None:
    """The unit's credentials directory is root's, mode 0700: read from the service user's shell,
    the error was a bare "[Errno 13] Permission denied" without the setting it came from."""
    import pytest

    from adapters.credentials import SecretError, read_secret

    creds = tmp_path / "credentials"
    creds.mkdir(mode=0o700)
    (creds / "collector-token").write_text("tok\n")
    monkeypatch.setenv("TR7_AGENT_CREDENTIALS", str(creds))
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.chdir("/")  # a shell's own directory, which it may read
    assert read_secret(None, "tr7_collector-token", "agent.token_file") == "tok"
    with _denied(creds), pytest.raises(SecretError) as err:
        read_secret(None, "tr7_collector-token", "agent.token_file")
    where = creds / "collector-token"
    assert str(err.value).startswith(f"agent.token_file: cannot read secret file {where}: permission denied; "
                                     "run this as root")


def test_a_password_in_the_collector_url_is_never_shown(tmp_path: Path, make_collector) -> None:
    """http://user:pass@host gets past a basic-auth proxy; its password was in every start's log
    line, in status and in enroll's messages."""
    collector = make_collector(tokens=["tok-1"])
    url = collector.url.replace("http://", "http://ops:S3cretPW@")
    cfg = write_config(tmp_path / "a.toml", {"state_dir": str(tmp_path / "s"), "collector": url,
                                             "interval": 1, "allow_short_interval": True},
                       [{"name": "lab", "platform": "kvm", "instances": 1}])
    enrolled = run_cli("enroll", "--config", str(cfg), "--token", "tok-1")
    status = run_cli("status", "--config", str(cfg), "--json")
    assert enrolled.returncode == 0 and json.loads(status.stdout)["collector"]["reachable"]  # still sent
    proc = subprocess.Popen([str(AGENT), "run", "--config", str(cfg)], stderr=subprocess.PIPE, text=True,
                            env=agent_env())
    time.sleep(2)
    proc.terminate()
    _, log = proc.communicate(timeout=60)
    down = write_config(tmp_path / "b.toml", {"state_dir": str(tmp_path / "t"),
                                              "collector": "http://ops:S3cretPW@127.0.0.1:9"}, [])
    refused = run_cli("enroll", "--config", str(down), "--token", "tok-1")
    shown = enrolled.stdout + enrolled.stderr + status.stdout + log + refused.stderr
    shown += (tmp_path / "s" / "enrollment.json").read_text()
    assert "S3cretPW" not in shown and "http://***@127.0.0.1" in log
    assert "***@127.0.0.1:9" in refused.stderr
    from agent.config import AgentSettings

    token_as_user = AgentSettings(collector="https://s3cr3ttoken@collector.example/tr7")
    assert token_as_user.collector_shown == "https://***@collector.example/tr7"
