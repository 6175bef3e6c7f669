"""The KVM adapter against a private libvirtd that demands SASL (DIGEST-MD5) on TCP: real refusals."""

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from adapters.base import AuthError, ConfigError
from adapters.kvm import ADAPTER, KVMConfig


def _load_helper(name: str, file: str) -> Any:
    # tests/ is not a package; same module names as test_kvm.py so both share one copy
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).parent / "libvirt" / file)
        assert spec and spec.loader
        sys.modules[name] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules[name]


nodexml = _load_helper("tr7_tests_nodexml", "nodexml.py")
daemon = _load_helper("tr7_tests_libvirtd", "daemon.py")
Dom = nodexml.Dom
USER, PASSWORD = "tr7-agent", "correct horse battery staple"


@pytest.fixture(scope="module")
def sasl_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    root = tmp_path_factory.mktemp("sasl")
    d = daemon.Libvirtd(root / "libvirtd", sasl_users={USER: PASSWORD}).start()
    d.node = root / "node.xml"
    nodexml.write_node(d.node, [Dom("appliance", license={"instance": "tr7-sasl"}), Dom("webserver")])
    yield d
    d.stop()


def adapter(uri: str, **credentials: str) -> Any:
    return ADAPTER(KVMConfig(name="kvm-sasl", uri=uri, **credentials))


def test_wrong_password_is_auth_error_naming_the_uri(sasl_daemon: Any) -> None:
    uri = sasl_daemon.tcp_uri(sasl_daemon.node)
    with pytest.raises(AuthError) as err:
        adapter(uri, username=USER, password="not the password").poll()
    assert str(err.value) == "authentication failed"
    assert err.value.diagnostic.startswith(f"{uri}: cannot connect: authentication failed")
    assert "wrong username or password?" in err.value.diagnostic
    # the refusal came from the daemon's SASL check, not from the client
    assert "authentication failed" in (sasl_daemon.root / "libvirtd.log").read_text()


def test_unknown_user_is_auth_error(sasl_daemon: Any) -> None:
    uri = sasl_daemon.tcp_uri(sasl_daemon.node)
    with pytest.raises(AuthError) as err:
        adapter(uri, username="intruder", password=PASSWORD).poll()
    assert str(err.value) == "authentication failed" and uri in err.value.diagnostic


def test_right_password_lists_the_domains(sasl_daemon: Any) -> None:
    kvm = adapter(sasl_daemon.tcp_uri(sasl_daemon.node), username=USER, password=PASSWORD)
    result = kvm.poll()
    assert [o.instance for o in result.observations] == ["tr7-sasl"] and result.error is None
    assert [o.instance for o in kvm.poll().observations] == ["tr7-sasl"]  # the connection is kept
    kvm.close()


def test_password_file_from_systemd_credentials(sasl_daemon: Any, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "libvirt-password").write_text(PASSWORD + "\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    kvm = adapter(sasl_daemon.tcp_uri(sasl_daemon.node), username=USER, password_file="libvirt-password")
    assert [o.instance for o in kvm.poll().observations] == ["tr7-sasl"]
    kvm.close()


def test_no_credentials_configured_fails_without_prompting(sasl_daemon: Any) -> None:
    uri = sasl_daemon.tcp_uri(sasl_daemon.node)
    with pytest.raises(AuthError) as err:
        adapter(uri).poll()
    assert err.value.diagnostic == (f"{uri}: cannot connect: libvirtd asks for a user name and a password; "
                                    "set username and password_file")


def test_libvirt_auth_conf_named_in_the_uri(sasl_daemon: Any, tmp_path: Path) -> None:
    # libvirt's own way: an auth.conf given with ?authfile=, no credentials in the adapter's config
    auth = tmp_path / "auth.conf"
    auth.write_text(f"[credentials-tr7]\nauthname={USER}\npassword={PASSWORD}\n\n"
                    "[auth-libvirt-127.0.0.1]\ncredentials=tr7\n")
    kvm = adapter(f"{sasl_daemon.tcp_uri(sasl_daemon.node)}?authfile={auth}")
    assert [o.instance for o in kvm.poll().observations] == ["tr7-sasl"]
    kvm.close()
    auth.write_text(auth.read_text().replace(PASSWORD, "stale"))
    with pytest.raises(AuthError):
        adapter(f"{sasl_daemon.tcp_uri(sasl_daemon.node)}?authfile={auth}").poll()


def test_unreadable_password_file_is_config_error(sasl_daemon: Any, tmp_path: Path) -> None:
    kvm = adapter(sasl_daemon.tcp_uri(sasl_daemon.node), username=USER,
                  password_file=str(tmp_path / "missing"))
    with pytest.raises(ConfigError) as err:
        kvm.poll()
    assert "missing" in str(err.value)


@pytest.mark.parametrize("credentials", [
    {"username": USER},  # no password
    {"password": PASSWORD},  # no username
    {"username": USER, "password": PASSWORD, "password_file": "p"},
    {"username": "", "password": PASSWORD},
])
def test_credentials_config_is_validated(credentials: dict[str, str]) -> None:
    with pytest.raises(ValidationError):
        KVMConfig(name="k", uri="qemu+tcp://kvm1/system", **credentials)
