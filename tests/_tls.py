"""TLS for the adapters' HTTPS simulators: a test CA, a served socket, a module loader, a closed port."""

import importlib.util
import socket
import ssl
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from socketserver import TCPServer
from typing import Any

import pytest
import trustme


def load_sibling(conftest: str, name: str) -> Any:
    """The module ``name``.py beside ``conftest`` (--import-mode=importlib puts no test dir on sys.path)."""
    spec = importlib.util.spec_from_file_location(name, Path(conftest).with_name(f"{name}.py"))
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The test CA's certificate as a PEM file, as an adapter's `ca_file` names it."""
    path = tmp_path_factory.mktemp("test-ca") / "test-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def issue_leaf(ca: trustme.CA) -> trustme.LeafCert:
    return ca.issue_cert("127.0.0.1", "localhost")


@contextmanager
def serve_tls(server: TCPServer, leaf: trustme.LeafCert) -> Iterator[int]:
    """Serve ``server`` over TLS with ``leaf`` in a daemon thread; yields its port, shuts it down after."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    leaf.configure_cert(ctx)
    # handshake in the handler thread, so a slow or refusing client never blocks accept()
    server.socket = ctx.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class RunningSim:
    url: str
    state: Any  # the simulator's state object: tests read and change it
    ca_file: str


@contextmanager
def run_sim(
    server: type[TCPServer], handler: type, state: Any, leaf: trustme.LeafCert, ca_file: str, path: str = ""
) -> Iterator[RunningSim]:
    """A simulator: ``server`` with a ``handler`` subclass bound to ``state``, over TLS, for the block."""
    bound = type("Handler", (handler,), {"state": state})
    with serve_tls(server(("127.0.0.1", 0), bound), leaf) as port:
        yield RunningSim(f"https://127.0.0.1:{port}{path}", state, ca_file)


@pytest.fixture
def closed_port() -> int:
    """A port on 127.0.0.1 with nobody listening (bound then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
