"""The collector link as operators meet it: the bearer token and CA files checked by content (never
echoed), rotated in place and reloaded, and a collector that redirects."""

import datetime
import io
import signal
import subprocess
import threading
import time
from contextlib import redirect_stderr
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import AGENT, agent_env, run_cli, spooled_state, write_config

from agent import commands
from agent.collectorlink import redact, shipping_identity
from agent.config import ConfigError, load_config
from agent.shipper import Shipper, make_client

ADAPTERS = [{"name": "lab", "platform": "kvm", "instances": 1}]
SECRET = "S3CRET-bearer-token"


def _pem(tmp_path: Path, name: str) -> Path:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    path = tmp_path / f"{name}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _agent(tmp_path: Path, **agent: object) -> Path:
    return write_config(tmp_path / "agent.toml", {"state_dir": str(tmp_path / "s"), "interval": 2,
                                                  "allow_short_interval": True, **agent}, ADAPTERS)


class _Recorder(BaseHTTPRequestHandler):
    """Answers every POST with ``status`` (a redirect to ``location``) and records its Authorization."""

    protocol_version = "HTTP/1.1"
    status, location, seen = 503, "", []  # replaced per server

    def log_message(self, *_: object) -> None:
        pass

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).seen.append(self.headers.get("Authorization"))
        self.send_response(self.status if self.command == "POST" else 200)
        if self.location:
            self.send_header("Location", self.location + self.path)  # moved, paths kept
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    do_GET = do_POST = _answer


@pytest.fixture
def http_server():
    servers: list[ThreadingHTTPServer] = []

    def make(status: int, location: str = "") -> tuple[str, list]:
        handler = type("H", (_Recorder,), {"status": status, "location": location, "seen": []})
        srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_port}", handler.seen

    yield make
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def test_a_token_files_blanks_are_stripped_and_a_bad_token_is_named_never_shown(tmp_path: Path,
                                                                                 fake_registry: None) -> None:
    """A pasted trailing blank made httpx quote `Bearer <token> ` in its error, printed by enroll
    and logged at every retry as 'unreachable'."""
    token = tmp_path / "token"
    token.write_text(f"  {SECRET} \t\r\n")
    cfg = load_config(_agent(tmp_path, collector="http://127.0.0.1:9", token_file=str(token)))
    with make_client(cfg.agent) as client:
        assert client.headers["Authorization"] == f"Bearer {SECRET}"
    for content, why in ((f"{SECRET} x\n", "a blank or a control character at position 20"),
                         (f"{SECRET}\x07", "a blank or a control character")):
        token.write_text(content)
        with pytest.raises(ConfigError) as err:
            load_config(cfg.path)
        assert f"{cfg.path}:6: [agent] token_file: {token}: " in str(err.value) and why in str(err.value)
        assert "S3CRET" not in str(err.value)
    # An empty file is no token, said (earlier releases took it, and refusing it stopped an
    # upgraded agent at its next restart: an upgrade review)
    token.write_text("\n")
    empty = load_config(cfg.path)
    assert empty.warnings == [f"{cfg.path}:6: [agent] token_file: {token}: the token is empty: heartbeats "
                              "are sent with no Authorization header"]
    with make_client(empty.agent) as client:
        assert "Authorization" not in client.headers
    # changed between the load and its use: enroll names the key, not "unreachable", and no token
    token.write_text(f"{SECRET} x\n")
    out = io.StringIO()
    with redirect_stderr(out):
        assert commands.enroll(cfg, "one-time") == 1
    assert "agent.token_file" in out.getvalue() and "unreachable" not in out.getvalue()
    assert "S3CRET" not in out.getvalue()
    assert redact("Illegal header value b'Bearer S3CRET x '") == "Illegal header value b'Bearer *** x '"


def test_a_token_with_a_bom_is_refused_by_validate_and_a_reload_onto_it_is_ignored(tmp_path: Path) -> None:
    """It passed `config validate`, then gave tracebacks (UnicodeEncodeError in httpx), and a
    SIGHUP onto it killed the running agent."""
    token = tmp_path / "token"
    token.write_bytes(b"\xef\xbb\xbfgood-token\n")
    cfg = _agent(tmp_path, token_file=str(token))
    res = run_cli("config", "validate", "--config", str(cfg))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert f"{cfg}:5: [agent] token_file: " in res.stderr and "byte-order mark" in res.stderr
    token.write_text("t\u00e9st\n")
    res = run_cli("status", "--config", str(cfg))
    assert res.returncode == 2 and "non-ASCII character at position 2" in res.stderr
    assert "Traceback" not in res.stderr

    token.write_text("good-token\n")
    assert run_cli("key", "--config", str(cfg)).returncode == 0
    log = tmp_path / "agent.err"
    with log.open("w") as out:
        proc = subprocess.Popen([str(AGENT), "run", "--config", str(cfg)], stderr=out, text=True,
                                env=agent_env())
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "s" / "spool.db").exists():
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.1)
        token.write_bytes(b"\xef\xbb\xbfgood-token\n")
        cfg.write_text(cfg.read_text().replace("interval = 2", "interval = 3"))
        proc.send_signal(signal.SIGHUP)
        while "event=reload_failed" not in log.read_text():  # however slow the machine is
            assert time.monotonic() < deadline + 30 and proc.poll() is None  # the configuration stays
            time.sleep(0.1)
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(30)
    err = log.read_text()
    assert proc.returncode == 0 and "event=reload_failed" in err and "token_file" in err
    assert "Traceback" not in err


def test_a_token_rotated_in_place_is_used_after_a_reload(tmp_path: Path, http_server) -> None:
    """Only the token_file's name was compared: the agent went on sending the revoked token."""
    url, seen = http_server(503)
    token = tmp_path / "token"
    token.write_text("OLD-token\n")
    cfg = _agent(tmp_path, collector=url, token_file=str(token), interval=1)
    assert run_cli("key", "--config", str(cfg)).returncode == 0
    proc = subprocess.Popen([str(AGENT), "run", "--config", str(cfg)], stderr=subprocess.PIPE, text=True,
                            env=agent_env())
    try:
        deadline = time.monotonic() + 30
        while "Bearer OLD-token" not in seen:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.1)
        token.write_text("NEW-token\n")
        proc.send_signal(signal.SIGHUP)
        while "Bearer NEW-token" not in seen:
            assert time.monotonic() < deadline + 15 and proc.poll() is None, sorted(set(seen))
            time.sleep(0.1)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "event=reloaded" in err and proc.returncode == 0


def test_a_ca_bundle_replaced_in_place_rebuilds_the_shipper(tmp_path: Path, fake_registry: None) -> None:
    ca = _pem(tmp_path, "old-ca")
    cfg = load_config(_agent(tmp_path, collector="https://127.0.0.1:9", ca_file=str(ca)))
    before = shipping_identity(cfg.agent)
    ca.write_bytes(_pem(tmp_path, "new-ca").read_bytes())
    assert shipping_identity(load_config(cfg.path).agent) != before
    assert shipping_identity(cfg.agent) == shipping_identity(load_config(cfg.path).agent)


def test_a_ca_file_that_is_no_pem_bundle_is_refused_by_validate(tmp_path: Path) -> None:
    """A DER .crt passed validate; enroll and run then gave only OpenSSL's reason, naming no file."""
    der = tmp_path / "collector-ca.crt"
    der.write_bytes(b"\x30\x82\x01\x0a" + b"\x00" * 64)
    cfg = _agent(tmp_path, collector="https://127.0.0.1:9", ca_file=str(der))
    res = run_cli("config", "validate", "--config", str(cfg))
    assert res.returncode == 2 and f"{cfg}:6: [agent] ca_file: {der}: no PEM certificate" in res.stderr
    cfg = _agent(tmp_path, collector="https://127.0.0.1:9", ca_file=str(_pem(tmp_path, "ca")))
    res = run_cli("config", "validate", "--config", str(cfg))
    assert res.returncode == 0, res.stderr


def test_a_redirect_names_the_collector_to_configure_and_is_not_followed(
        tmp_path: Path, http_server, caplog: pytest.LogCaptureFixture, fake_registry: None) -> None:
    """A 308 was "refused (HTTP 308): " with an empty detail, retried for ever, Location shown nowhere."""
    new, new_seen = http_server(200)
    old, _ = http_server(308, location=new)
    token = tmp_path / "token"
    token.write_text(SECRET + "\n")
    cfg = _agent(tmp_path, collector=old, token_file=str(token))
    res = run_cli("enroll", "--config", str(cfg), "--token", "tok-1")
    assert res.returncode == 1 and "refused" not in res.stderr
    assert f'redirected (HTTP 308) to {new}/v1/agents/enroll: set collector = "{new}"' in res.stderr

    (tmp_path / "x").mkdir()
    _state, _key, spool = spooled_state(tmp_path / "x", 2)
    shipper = Shipper(load_config(cfg).agent, spool)
    with caplog.at_level("ERROR"):
        delay = shipper.ship_once()
    shipper.client.close()
    assert delay is not None and delay > 0 and spool.stats()["spool_depth"] == 2
    assert "event=ship_redirected" in caplog.text and f'set collector = "{new}"' in caplog.text
    spool.close()
    assert new_seen == []  # the token never went to the other address
