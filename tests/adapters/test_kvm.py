"""The KVM adapter against libvirt's test:/// driver, in process and behind a real libvirtd."""

import importlib.util
import logging
import os
import re
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest
from pydantic import ValidationError

import adapters.kvm as kvm_module
from adapters.base import AdapterError, Capacity, ConfigError, UnreachableError
from adapters.kvm import ADAPTER, KVMConfig
from adapters.registry import adapter_class


def _load_helper(name: str, file: str) -> Any:
    # tests/ is not a package; load the helpers (nodexml is also used by bench/) by path
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).parent / "libvirt" / file)
        assert spec and spec.loader
        sys.modules[name] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules[name]


nodexml = _load_helper("tr7_tests_nodexml", "nodexml.py")
daemon = _load_helper("tr7_tests_libvirtd", "daemon.py")
Dom = nodexml.Dom


def adapter(uri: str, name: str = "kvm") -> Any:
    return ADAPTER(ADAPTER.Config(name=name, platform="kvm", uri=uri))


def by_instance(result: Any) -> dict[str, Any]:
    return {o.instance: o for o in result.observations}


def test_registry_and_config() -> None:
    assert adapter_class("kvm") is ADAPTER and ADAPTER.platform == "kvm"
    assert KVMConfig(name="k").uri == "qemu:///system"
    for name, field in KVMConfig.model_fields.items():
        assert field.description, name
    with pytest.raises(ValidationError):
        KVMConfig(name="k", url="qemu:///system")  # unknown key (typo) is refused
    with pytest.raises(ValidationError):
        KVMConfig(name="k", platform="vmware")


def test_domains_with_metadata_are_observed(tmp_path: Path) -> None:
    full = Dom("appliance", license={"instance": "tr7-kvm-1", "bundle": "pro", "bandwidth_mbps": "500",
                                     "vservices": "4"})
    bare = Dom("bare-tr7", license={"instance": "tr7-kvm-2"})
    plain = Dom("webserver")  # no metadata at all
    other = Dom("other-ns", raw_metadata='<app:info xmlns:app="urn:example:app" instance="tr7-not-ours"/>')
    uri = nodexml.write_node(tmp_path / "node.xml", [full, bare, plain, other])
    result = adapter(uri).poll()
    assert result.error is None
    seen = by_instance(result)
    assert set(seen) == {"tr7-kvm-1", "tr7-kvm-2"}
    assert seen["tr7-kvm-1"].vm == full.uuid
    assert seen["tr7-kvm-1"].capacity == Capacity(bundle="pro", bandwidth_mbps=500, vservices=4)
    assert seen["tr7-kvm-2"].vm == bare.uuid and seen["tr7-kvm-2"].capacity is None
    conn = libvirt.openReadOnly(uri)
    assert seen["tr7-kvm-1"].host == conn.getHostname()
    conn.close()


@pytest.mark.parametrize(("runstate", "state"), [
    (libvirt.VIR_DOMAIN_NOSTATE, "unknown"),
    (libvirt.VIR_DOMAIN_RUNNING, "running"),
    (libvirt.VIR_DOMAIN_BLOCKED, "running"),
    (libvirt.VIR_DOMAIN_PAUSED, "paused"),
    (libvirt.VIR_DOMAIN_SHUTDOWN, "stopped"),
    (libvirt.VIR_DOMAIN_SHUTOFF, "stopped"),
    (libvirt.VIR_DOMAIN_CRASHED, "stopped"),
    (libvirt.VIR_DOMAIN_PMSUSPENDED, "suspended"),
])
def test_every_libvirt_state(tmp_path: Path, runstate: int, state: str) -> None:
    uri = nodexml.write_node(tmp_path / "node.xml", [Dom("d", state=runstate, license={"instance": "tr7-s"})])
    conn = libvirt.openReadOnly(uri)
    assert conn.lookupByName("d").state()[0] == runstate  # the simulator really is in that state
    conn.close()
    assert by_instance(adapter(uri).poll())["tr7-s"].state == state


def test_malformed_values_logged_once_across_polls(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bad_id = Dom("bad-id", license={"instance": "has spaces!"})
    bad_bw = Dom("bad-bw", license={"instance": "tr7-bw", "bandwidth_mbps": "1Gbit", "vservices": "3"})
    no_id = Dom("no-id", license={"bundle": "pro"})
    uri = nodexml.write_node(tmp_path / "node.xml", [bad_id, bad_bw, no_id])
    kvm = adapter(uri, name="kvm-log")
    with caplog.at_level(logging.WARNING, logger="tr7.adapters"):
        results = [kvm.poll(), kvm.poll()]
    for result in results:
        assert set(by_instance(result)) == {"tr7-bw"}
        assert by_instance(result)["tr7-bw"].capacity == Capacity(vservices=3)  # bandwidth left out
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if bad_id.uuid in m and "has spaces!" in m]) == 1
    assert len([m for m in messages if bad_bw.uuid in m and "1Gbit" in m]) == 1
    assert len([m for m in messages if no_id.uuid in m and "no instance" in m]) == 1
    assert len(messages) == 3


def test_zero_domains(tmp_path: Path) -> None:
    result = adapter(nodexml.write_node(tmp_path / "node.xml", [])).poll()
    assert result.observations == [] and result.error is None


def test_two_thousand_domains(tmp_path: Path) -> None:
    doms = [Dom(f"vm{i:04d}", state=(libvirt.VIR_DOMAIN_RUNNING if i % 4 else libvirt.VIR_DOMAIN_SHUTOFF),
                license={"instance": f"tr7-{i:04d}"} if i % 2 == 0 else None) for i in range(2000)]
    kvm = adapter(nodexml.write_node(tmp_path / "node.xml", doms))
    seen = by_instance(kvm.poll())
    assert len(seen) == 1000
    assert {o.vm for o in seen.values()} == {d.uuid for d in doms if d.license}
    assert seen["tr7-0000"].state == "stopped" and seen["tr7-0002"].state == "running"


def test_reconnects_when_the_connection_died(tmp_path: Path) -> None:
    uri = nodexml.write_node(tmp_path / "node.xml", [Dom("d", license={"instance": "tr7-r"})])
    kvm = adapter(uri)
    assert "tr7-r" in by_instance(kvm.poll())
    kvm._conn.close()  # what a libvirtd restart does to our end of the connection
    assert "tr7-r" in by_instance(kvm.poll())
    kvm.close()


def test_unreachable_daemon_is_unreachable_error() -> None:
    with socket.socket() as s:  # a port nobody listens on any more
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"qemu+tcp://127.0.0.1:{port}/system"
    with pytest.raises(UnreachableError) as err:
        adapter(uri).poll()
    assert uri in err.value.diagnostic and "refused" in err.value.diagnostic.lower()


def test_a_uri_with_two_slashes_is_named_as_the_docs_say() -> None:
    """kvm.md: `cannot use <uri>` ... check `uri` (`qemu:///system`, not `qemu://system`); it was
    "libvirt error 1" (libvirt calls it an internal error). Found by a review."""
    with pytest.raises(ConfigError) as err:
        adapter("qemu://system").poll()
    assert err.value.reason == "cannot use qemu://system"
    assert "maybe you want qemu:///system" in err.value.diagnostic


def test_missing_local_socket_is_unreachable_error(tmp_path: Path) -> None:
    uri = f"qemu:///system?socket={tmp_path / 'no-libvirt-sock'}"
    with pytest.raises(UnreachableError) as err:
        adapter(uri).poll()
    assert "libvirtd running" in err.value.diagnostic


def test_broken_test_node_file_is_config_error(tmp_path: Path) -> None:
    (tmp_path / "node.xml").write_text("<node><domain")
    with pytest.raises(ConfigError) as err:
        adapter(f"test://{tmp_path / 'node.xml'}").poll()
    assert isinstance(err.value, AdapterError) and "node.xml" in err.value.diagnostic


@pytest.fixture
def libvirtd(tmp_path: Path) -> Iterator[Any]:
    d = daemon.Libvirtd(tmp_path / "libvirtd").start()
    yield d
    d.stop()


def test_through_a_real_libvirtd_and_its_restart(tmp_path: Path, libvirtd: Any) -> None:
    dom = Dom("remote", state=libvirt.VIR_DOMAIN_PAUSED, license={"instance": "tr7-remote", "vservices": "2"})
    nodexml.write_node(tmp_path / "node.xml", [dom])
    kvm = adapter(libvirtd.uri(tmp_path / "node.xml"))  # test driver behind the remote protocol
    seen = by_instance(kvm.poll())
    assert seen["tr7-remote"].vm == dom.uuid and seen["tr7-remote"].state == "paused"
    assert seen["tr7-remote"].capacity == Capacity(vservices=2)
    # libvirtd restarts between two polls (package upgrade): the next poll reconnects by itself
    libvirtd.stop()
    libvirtd.start()
    assert "tr7-remote" in by_instance(kvm.poll())
    # libvirtd is down: the poll fails clearly; once it is back, polls work again
    libvirtd.stop()
    with pytest.raises(UnreachableError) as err:
        kvm.poll()
    assert "libvirtd running" in err.value.diagnostic
    libvirtd.start()
    assert "tr7-remote" in by_instance(kvm.poll())
    kvm.close()


@pytest.mark.timeout(120)  # without keepalive the frozen daemon would block the poll for good
def test_frozen_daemon_fails_the_poll_instead_of_hanging(tmp_path: Path, libvirtd: Any,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kvm_module, "KEEPALIVE", (1, 1))
    nodexml.write_node(tmp_path / "node.xml", [Dom("d", license={"instance": "tr7-f"})])
    kvm = adapter(libvirtd.uri(tmp_path / "node.xml"))
    assert "tr7-f" in by_instance(kvm.poll())
    libvirtd.freeze()
    try:
        with pytest.raises(UnreachableError) as err:
            kvm.poll()
        assert "keepalive" in err.value.diagnostic
    finally:
        libvirtd.thaw()
    assert "tr7-f" in by_instance(kvm.poll())
    kvm.close()


@pytest.mark.timeout(120)
def test_connecting_to_a_frozen_daemon_fails_the_poll_by_its_timeout(tmp_path: Path, libvirtd: Any) -> None:
    """openAuth has no timeout, and keepalive starts only once it returns: the poll after a
    keepalive failure (or the first after a start) waited for libvirtd to wake up. Found by a review."""
    import time

    nodexml.write_node(tmp_path / "node.xml", [Dom("d", license={"instance": "tr7-f"})])
    uri = libvirtd.uri(tmp_path / "node.xml")
    kvm = ADAPTER(ADAPTER.Config(name="kvm", platform="kvm", uri=uri, timeout=3))
    libvirtd.freeze()
    try:
        started = time.monotonic()
        with pytest.raises(UnreachableError, match="connecting to libvirtd: no answer within the poll"):
            kvm.poll()
        assert time.monotonic() - started < 10
        with pytest.raises(UnreachableError):  # the attempt still under way is not doubled
            kvm.poll()
    finally:
        libvirtd.thaw()
    for _ in range(50):  # the attempt left running completes once the daemon answers
        try:
            assert "tr7-f" in by_instance(kvm.poll())
            break
        except UnreachableError:
            time.sleep(0.2)
    else:
        raise AssertionError("no poll succeeded after the daemon woke up")
    kvm.close()


@pytest.mark.timeout(120)
def test_a_daemon_dripping_its_answers_is_cut_off_at_the_timeout(tmp_path: Path, libvirtd: Any) -> None:
    """A remote libvirtd (or the ssh/TLS path to it) answering a byte every 10 ms: keepalive is
    answered in time, so only the poll's deadline ends the listing, which had none (each domain is
    a call or two). A 2 s poll of 20 domains took 25 s; close()'s own call (CONNECT_CLOSE)
    waited for its whole answer too. Once the daemon is well, the next poll works."""
    import time

    nodexml.write_node(tmp_path / "node.xml", [Dom(f"d{i}", license={"instance": f"tr7-{i}"})
                                               for i in range(20)])
    proxy = daemon.DripProxy(libvirtd.socket, libvirtd.root / "drip-sock")
    uri = f"test+unix://{(tmp_path / 'node.xml').resolve()}?socket={proxy.path}"
    kvm = ADAPTER(ADAPTER.Config(name="kvm", platform="kvm", uri=uri, timeout=2))
    try:
        assert len(kvm.poll().observations) == 20
        proxy.calm.clear()
        started = time.monotonic()
        with pytest.raises(UnreachableError, match="no answer within the poll timeout"):
            kvm.poll()
        assert time.monotonic() - started < 5  # 0.9 x timeout 2 s, and slack for a loaded machine
        with pytest.raises(UnreachableError, match="still waiting"):
            kvm.poll()  # the listing left running is not doubled
        proxy.calm.set()
        for _ in range(100):  # the listing left running ends once the daemon answers
            try:
                assert len(kvm.poll().observations) == 20
                break
            except UnreachableError:
                time.sleep(0.1)
        else:
            raise AssertionError("no poll succeeded once the daemon was well")
        proxy.pause = 0.2  # its answer is short: 28 bytes
        proxy.calm.clear()
        started = time.monotonic()
        kvm.close()
        assert time.monotonic() - started < 5  # 0.9 x timeout 2 s, and slack for a loaded machine
    finally:
        proxy.calm.set()
        proxy.close()


def test_a_connection_that_opens_after_close_is_closed(tmp_path: Path, libvirtd: Any,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A reload closes the old adapter while its connect still waits on a frozen libvirtd: once the
    daemon answered, the connection was kept by the closed adapter, one more each such reload, until
    the process ended. Found by a review."""
    import threading

    from tests._dripproxy import DripProxy

    nodexml.write_node(tmp_path / "node.xml", [Dom("d0", license={"instance": "tr7-0"})])
    opened: list[Any] = []
    open_auth = libvirt.openAuth
    monkeypatch.setattr(libvirt, "openAuth", lambda *a: opened.append(open_auth(*a)) or opened[-1])
    held = threading.Event()
    proxy = DripProxy.unix(libvirtd.socket, libvirtd.root / "hold-sock", hold=held)
    uri = f"test+unix://{(tmp_path / 'node.xml').resolve()}?socket={proxy.path}"
    kvm = ADAPTER(ADAPTER.Config(name="kvm-late", platform="kvm", uri=uri, timeout=1))
    try:
        with pytest.raises(UnreachableError, match="connecting to libvirtd: no answer"):
            kvm.poll()
        kvm.close()  # a reload, while the connect waits
        held.set()
        for t in [t for t in threading.enumerate() if t.name == "kvm-connect-kvm-late"]:
            t.join(30)
        assert kvm._conn is None and len(opened) == 1
        with pytest.raises(libvirt.libvirtError):  # closed: libvirt refuses calls on it
            opened[0].getHostname()
    finally:
        held.set()
        proxy.close()


@pytest.mark.parametrize("pause", [0.1, 0.6])
def test_a_listing_too_slow_for_the_timeout_says_how_far_it_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pause: float,
) -> None:
    """A host answering steadily but too slowly for its domains: the poll says how many were read,
    not the bare "no answer" of a listing that never came back: from the listing's own check between
    domains (0.25 s before the poll gives up on it), or from how far it got when a domain takes longer
    than that (0.6 s: a review found those said "no answer")."""
    import time

    uri = nodexml.write_node(tmp_path / "node.xml", [Dom(f"d{i}", license={"instance": f"tr7-{i}"})
                                                      for i in range(40)])
    kvm = ADAPTER(ADAPTER.Config(name="kvm", platform="kvm", uri=uri, timeout=2))
    observe = kvm._observation

    def slow(dom: Any, host: str) -> Any:
        time.sleep(pause)  # a round trip or two to a busy daemon: 40 domains take 4 s or 24 s
        return observe(dom, host)

    monkeypatch.setattr(kvm, "_observation", slow)
    started = time.monotonic()
    with pytest.raises(UnreachableError) as err:
        kvm.poll()
    assert time.monotonic() - started < 5  # 0.9 x timeout 2 s, and slack for a loaded machine
    assert err.value.reason == "timeout", err.value
    assert re.search(r"listing unfinished after 2s \(\d+ TR7 instances read\)", err.value.diagnostic)
    kvm.close()


def test_a_socket_the_agent_user_may_not_open_is_access_denied(tmp_path: Path) -> None:
    """unix_sock_ro_perms "0770" and an agent user outside the libvirt group: the fix is the
    group (access denied), not starting libvirtd (unreachable, as it was reported)."""
    import subprocess

    locked = tmp_path / "locked"
    locked.mkdir()
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(locked / "libvirt-sock-ro"))
    sock.listen()
    run = [sys.executable]
    if os.geteuid() == 0:
        # root opens any socket; without its capabilities (util-linux's setpriv) it is held to the
        # modes as the agent's user is: a directory of another user, mode 0700
        os.chown(locked, 65534, 65534)
        locked.chmod(0o700)
        run = ["setpriv", "--bounding-set=-all", "--inh-caps=-all", sys.executable]
    else:
        locked.chmod(0o000)
    uri = f"qemu:///system?socket={locked}/libvirt-sock-ro"
    code = (
        "import sys; from adapters.kvm import ADAPTER; from adapters.base import AdapterError\n"
        f"a = ADAPTER(ADAPTER.Config(name='k', platform='kvm', uri={uri!r}))\n"
        "try:\n    a.poll()\n"
        "except AdapterError as e:\n    print(type(e).__name__, e.reason, '|', e.diagnostic)\n"
    )
    try:
        out = subprocess.run([*run, "-c", code], capture_output=True, text=True, timeout=60,
                             cwd=Path(__file__).resolve().parents[2])
    finally:
        locked.chmod(0o700)
        sock.close()
    assert out.stdout.startswith("AuthError access denied |"), out.stdout + out.stderr
    assert "Permission denied" in out.stdout and "libvirt group" in out.stdout
