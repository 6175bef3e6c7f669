"""Fixtures: a WS-Management simulator on 127.0.0.1 over TLS signed by a test CA, and adapter factories."""

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from spnego.channel_bindings import GssChannelBindings

from adapters.hyperv import HyperVAdapter, HyperVConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repository: tests/_tls.py
from tests import _tls

ca, ca_file, closed_port = _tls.ca, _tls.ca_file, _tls.closed_port  # the shared fixtures
wsman_sim = _tls.load_sibling(__file__, "wsman_sim")


@pytest.fixture
def wsman(ca: trustme.CA, ca_file: str) -> Iterator[_tls.RunningSim]:
    state, leaf = wsman_sim.WsmanState(), _tls.issue_leaf(ca)
    # NTLM channel binding (RFC 5929 tls-server-end-point), as HTTP.sys checks with EPA on
    cert = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())
    state.channel_bindings = GssChannelBindings(
        application_data=b"tls-server-end-point:" + cert.fingerprint(hashes.SHA256()))
    with _tls.run_sim(wsman_sim.QuietServer, wsman_sim.WsmanHandler, state, leaf, ca_file, "/wsman") as sim:
        yield sim


@pytest.fixture
def make_adapter(wsman: _tls.RunningSim) -> Callable[..., HyperVAdapter]:
    def make(**overrides: Any) -> HyperVAdapter:
        cfg: dict[str, Any] = {"name": "hv-lab", "platform": "hyperv", "url": wsman.url,
                               "username": wsman.state.username, "password": wsman.state.password,
                               "transport": "basic", "ca_file": wsman.ca_file, "timeout": 10}
        cfg.update(overrides)
        cfg = {k: v for k, v in cfg.items() if v is not None}
        return HyperVAdapter(HyperVConfig(**cfg))

    return make


@pytest.fixture
def ntlm_users(wsman: _tls.RunningSim, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The simulator accepts NTLM (in Negotiate) for its account, from pyspnego's credential file."""
    domain, _, user = wsman.state.username.partition("\\")
    (tmp_path / "ntlm-users").write_text(f"{domain}:{user}:{wsman.state.password}\n")
    monkeypatch.setenv("NTLM_USER_FILE", str(tmp_path / "ntlm-users"))
    wsman.state.auth = "negotiate"
