"""Fixtures: the TLS Azure test server (Entra ID token endpoints + ARM) and a service principal on it."""

import importlib.util
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


def _load_server_module() -> Any:
    # loaded by path: tests run with --import-mode=importlib, so sibling modules are not importable
    name = "tr7_tests_azure_arm_server"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("arm_server.py"))
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


arm_server = _load_server_module()

@pytest.fixture(scope="session")
def arm_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    server = arm_server.ArmServer(tmp_path_factory.mktemp("arm"))
    yield server
    server.close()


@pytest.fixture
def arm(arm_session: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A server with no client and no subscription yet, and no ambient Azure settings."""
    for var in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_AUTHORITY_HOST",
                "IDENTITY_ENDPOINT", "IDENTITY_HEADER", "MSI_ENDPOINT", "MSI_SECRET", "REQUESTS_CA_BUNDLE",
                "CURL_CA_BUNDLE", "AZURE_REGIONAL_AUTHORITY_NAME", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    arm_session.clients.clear()
    arm_session.calm.clear()
    arm_session.subscriptions.clear()
    with arm_session.lock:
        arm_session.requests.clear()
        arm_session.tokens.clear()
    return arm_session


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
