"""Fixtures: a WS-Management simulator on 127.0.0.1 over TLS signed by a test CA, and adapter factories."""

import importlib.util
import socket
import ssl
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from spnego.channel_bindings import GssChannelBindings

from adapters.hyperv import HyperVAdapter, HyperVConfig


def _load(name: str) -> Any:
    # --import-mode=importlib puts no test dir on sys.path: load the sibling module by path
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


wsman_sim = _load("wsman_sim")


@dataclass
class RunningWsman:
    url: str
    state: Any
    ca_file: str


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("winrm-ca") / "winrm-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
def wsman(ca: trustme.CA, ca_file: str) -> Iterator[RunningWsman]:
    state = wsman_sim.WsmanState()
    handler = type("Handler", (wsman_sim.WsmanHandler,), {"state": state})
    server = wsman_sim.QuietServer(("127.0.0.1", 0), handler)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    leaf.configure_cert(ctx)
    # NTLM channel binding (RFC 5929 tls-server-end-point), as HTTP.sys checks with EPA on
    cert = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())
    state.channel_bindings = GssChannelBindings(
        application_data=b"tls-server-end-point:" + cert.fingerprint(hashes.SHA256()))
    # handshake in the handler thread, so a slow or refusing client never blocks accept()
    server.socket = ctx.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield RunningWsman(f"https://127.0.0.1:{server.server_address[1]}/wsman", state, ca_file)
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def make_adapter(wsman: RunningWsman) -> Callable[..., HyperVAdapter]:
    def make(**overrides: Any) -> HyperVAdapter:
        cfg: dict[str, Any] = {"name": "hv-lab", "platform": "hyperv", "url": wsman.url,
                               "username": wsman.state.username, "password": wsman.state.password,
                               "transport": "basic", "ca_file": wsman.ca_file, "timeout": 10}
        cfg.update(overrides)
        cfg = {k: v for k, v in cfg.items() if v is not None}
        return HyperVAdapter(HyperVConfig(**cfg))

    return make


@pytest.fixture
def ntlm_users(wsman: RunningWsman, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The simulator accepts NTLM (in Negotiate) for its account, from pyspnego's credential file."""
    domain, _, user = wsman.state.username.partition("\\")
    (tmp_path / "ntlm-users").write_text(f"{domain}:{user}:{wsman.state.password}\n")
    monkeypatch.setenv("NTLM_USER_FILE", str(tmp_path / "ntlm-users"))
    wsman.state.auth = "negotiate"


@pytest.fixture
def closed_port() -> int:
    """A port on 127.0.0.1 with nobody listening (bound then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
