"""Fixtures: a PVE API simulator on 127.0.0.1 over TLS signed by a test CA, and adapter factories."""

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from adapters.proxmox import ProxmoxAdapter, ProxmoxConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repository: tests/_tls.py
from tests import _tls

ca, ca_file, closed_port = _tls.ca, _tls.ca_file, _tls.closed_port  # the shared fixtures
pve_sim = _tls.load_sibling(__file__, "pve_sim")


@pytest.fixture
def pve(ca: trustme.CA, ca_file: str) -> Iterator[_tls.RunningSim]:
    leaf = _tls.issue_leaf(ca)
    with _tls.run_sim(pve_sim.QuietServer, pve_sim.PveHandler, pve_sim.PveState(), leaf, ca_file) as sim:
        yield sim


@pytest.fixture
def make_adapter(pve: _tls.RunningSim) -> Callable[..., ProxmoxAdapter]:
    user, _, rest = pve.state.token.partition("!")
    token_name, _, secret = rest.partition("=")

    def make(**overrides: Any) -> ProxmoxAdapter:
        cfg: dict[str, Any] = {"name": "pve-lab", "platform": "proxmox", "url": pve.url,
                               "token_id": f"{user}!{token_name}", "token_secret": secret,
                               "ca_file": pve.ca_file, "timeout": 10}
        cfg.update(overrides)
        cfg = {k: v for k, v in cfg.items() if v is not None}
        return ProxmoxAdapter(ProxmoxConfig(**cfg))

    return make
