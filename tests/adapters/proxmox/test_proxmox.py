"""The Proxmox adapter against the PVE API simulator: recognition, states, failures, scale, TLS."""

import logging
import sys
import threading
import time
from typing import Any

import pytest
import trustme
from pydantic import ValidationError
from urllib3.exceptions import InsecureRequestWarning

from adapters.base import AdapterError, AuthError, Capacity, ConfigError, UnreachableError
from adapters.proxmox import ProxmoxAdapter, ProxmoxConfig
from adapters.registry import adapter_class

pve_sim: Any = sys.modules["pve_sim"]  # loaded by conftest.py
SimVM = pve_sim.SimVM

TAG = "tr7.instance: {}\ntr7.bundle: ent\ntr7.bandwidth_mbps: 1000\ntr7.vservices: 8"


def tagged(instance: str, extra: str = "") -> str:
    return f"Traffic appliance, owner: netops\n\ntr7.instance: {instance}\n{extra}"


def cluster() -> list[Any]:
    """A 3-node cluster: TR7 VMs in every state, plain VMs, a template, a container."""
    return [
        SimVM("pve1", 100, "tr7-edge-a", description=TAG.format("TR7-A")),
        SimVM("pve1", 101, "web01", description="just a web server"),
        SimVM("pve1", 102, "tr7-edge-b", status="stopped", description=tagged("TR7-B")),
        SimVM("pve1", 103, "db01"),
        SimVM("pve2", 200, "tr7-paused", qmpstatus="paused", description=tagged("TR7-P")),
        SimVM("pve2", 201, "tr7-s3", qmpstatus="suspended", description=tagged("TR7-S3")),
        SimVM("pve2", 202, "tr7-hib", status="stopped", lock="suspended",
              vmstate="local-lvm:vm-202-state-suspend-2026-11-21", description=tagged("TR7-H")),
        SimVM("pve2", 203, "tr7-pre", qmpstatus="prelaunch", description=tagged("TR7-PRE")),
        SimVM("pve3", 300, "tr7-template", template=True, description=tagged("TR7-TPL")),
        SimVM("pve3", 301, "tr7-ct", type="lxc", description=tagged("TR7-CT")),
        SimVM("pve3", 302, "tr7-lost", status="unknown", description=tagged("TR7-U")),
        SimVM("pve3", 303, "tr7-bad", description=tagged("bad id!")),
        SimVM("pve3", 304, "tr7-bw",
              description=tagged("TR7-BW", "tr7.bandwidth_mbps: fast\ntr7.bundle: std")),
        SimVM("pve3", 305, "tr7-odd", qmpstatus="guest-panicked", description=tagged("TR7-ODD")),
    ]


EXPECTED = {
    ("TR7-A", "pve1/100", "pve1", "running", Capacity("ent", 1000, 8)),
    ("TR7-B", "pve1/102", "pve1", "stopped", None),
    ("TR7-P", "pve2/200", "pve2", "paused", None),
    ("TR7-S3", "pve2/201", "pve2", "suspended", None),
    ("TR7-H", "pve2/202", "pve2", "suspended", None),
    ("TR7-PRE", "pve2/203", "pve2", "paused", None),
    ("TR7-U", "pve3/302", "pve3", "unknown", None),
    ("TR7-BW", "pve3/304", "pve3", "running", Capacity(bundle="std")),
    ("TR7-ODD", "pve3/305", "pve3", "unknown", None),
}


def seen(result: Any) -> set[tuple[Any, ...]]:
    return {(o.instance, o.vm, o.host, o.state, o.capacity) for o in result.observations}


def test_registry_finds_the_module() -> None:
    assert adapter_class("proxmox") is ProxmoxAdapter


def test_cluster_recognition_and_every_state(pve: Any, make_adapter: Any) -> None:
    pve.state.vms = cluster()
    result = make_adapter().poll()
    assert result.error is None
    assert seen(result) == EXPECTED


def test_one_resources_call_and_configs_only_for_qemu_non_templates(pve: Any, make_adapter: Any) -> None:
    pve.state.vms = cluster()
    make_adapter().poll()
    gets = [p for m, p in pve.state.requests if m == "GET"]
    assert gets.count("/api2/json/cluster/resources") == 1
    configs = sorted(p.split("/")[4] + "/" + p.split("/")[6] for p in gets if p.endswith("/config"))
    qemu = sorted(f"{v.node}/{v.vmid}" for v in pve.state.vms if v.type == "qemu" and not v.template)
    assert configs == qemu  # no config read for the LXC container or the template
    # qmpstatus is asked only for recognised TR7 VMs that cluster/resources reports running
    status = {p.split("/")[6] for p in gets if p.endswith("/status/current")}
    assert status == {"100", "200", "201", "203", "304", "305"}


def test_malformed_values_logged_once_across_polls(pve: Any, make_adapter: Any,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    pve.state.vms = cluster()
    adapter = make_adapter()
    with caplog.at_level(logging.WARNING, logger="tr7.adapters"):
        adapter.poll()
        adapter.poll()
    bad = [r for r in caplog.records if "pve3/303" in r.getMessage()]
    bw = [r for r in caplog.records if "pve3/304" in r.getMessage() and "bandwidth_mbps" in r.getMessage()]
    assert len(bad) == 1 and "skipped" in bad[0].getMessage()
    assert len(bw) == 1


def test_password_login_uses_a_ticket(pve: Any, make_adapter: Any) -> None:
    pve.state.vms = cluster()
    result = make_adapter(token_id=None, token_secret=None, username="tr7@pve", password="s3cret").poll()
    assert seen(result) == EXPECTED
    assert ("POST", "/api2/json/access/ticket") in pve.state.requests


def test_password_from_credentials_directory(pve: Any, make_adapter: Any, tmp_path: Any,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pve-password").write_text("s3cret\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    adapter = make_adapter(token_id=None, token_secret=None, username="tr7@pve", password_file="pve-password")
    assert adapter.poll().error is None


def test_wrong_password_is_auth_error(pve: Any, make_adapter: Any) -> None:
    adapter = make_adapter(token_id=None, token_secret=None, username="tr7@pve", password="nope")
    with pytest.raises(AuthError):
        adapter.poll()


def test_wrong_token_is_auth_error(pve: Any, make_adapter: Any) -> None:
    pve.state.vms = cluster()
    with pytest.raises(AuthError):
        make_adapter(token_secret="00000000-0000-0000-0000-000000000000").poll()


def test_closed_port_is_unreachable(make_adapter: Any, closed_port: int) -> None:
    with pytest.raises(UnreachableError):
        make_adapter(url=f"https://127.0.0.1:{closed_port}").poll()


def test_one_node_failing_is_a_partial_error(pve: Any, make_adapter: Any) -> None:
    pve.state.vms = cluster()
    pve.state.node_errors["pve2"] = (500, "Internal Server Error")
    result = make_adapter().poll()
    assert result.error is not None and "pve2" in result.error
    assert seen(result) == {e for e in EXPECTED if e[2] != "pve2"}


def test_offline_node_is_a_partial_error(pve: Any, make_adapter: Any) -> None:
    pve.state.vms = cluster()
    pve.state.node_errors["pve3"] = (595, "Errors during connection establishment, proxy handshake")
    result = make_adapter().poll()
    assert result.error is not None and "pve3" in result.error and "unreachable" in result.error
    assert seen(result) == {e for e in EXPECTED if e[2] != "pve3"}


def test_unreadable_qmpstatus_keeps_the_vm_running_with_an_error(pve: Any, make_adapter: Any) -> None:
    pve.state.vms = cluster()
    pve.state.status_errors.add("pve2/200")
    result = make_adapter().poll()
    assert result.error is not None and "pve2/200" in result.error
    assert ("TR7-P", "pve2/200", "pve2", "running", None) in seen(result)


def test_resources_timeout_is_unreachable(pve: Any, make_adapter: Any) -> None:
    pve.state.vms = cluster()
    pve.state.resources_delay = 3
    with pytest.raises(UnreachableError, match="timeout"):
        make_adapter(timeout=0.5).poll()


def test_slow_node_times_out_as_partial_error(pve: Any, make_adapter: Any) -> None:
    pve.state.vms = cluster()
    pve.state.node_delay["pve3"] = 4
    result = make_adapter(timeout=1.5).poll()
    assert result.error is not None
    assert {e for e in EXPECTED if e[2] != "pve3"} <= seen(result)
    assert not any(o.host == "pve3" for o in result.observations)


def test_a_hung_node_with_more_vms_than_workers_leaves_the_others_read(pve: Any, make_adapter: Any) -> None:
    # each of its requests waits out the timeout: they held every worker, and nothing was read
    hung = [SimVM("pve3", 100 + i, f"c{i}", description=f"tr7.instance: TR7-C{i}") for i in range(10)]
    pve.state.vms = hung
    pve.state.vms += [SimVM("pve1", 200, "a", description="tr7.instance: TR7-A"),
                      SimVM("pve2", 300, "b", description="tr7.instance: TR7-B")]
    pve.state.node_delay["pve3"] = 30
    result = make_adapter(timeout=2).poll()
    assert sorted(o.vm for o in result.observations) == ["pve1/200", "pve2/300"]
    assert result.error == "node pve3: 10 VM config(s) unread within the 2s timeout"


def test_the_vms_a_poll_left_unread_are_read_first_at_the_next(pve: Any, make_adapter: Any) -> None:
    """More VM configs than one poll can read: queued in the API's order, the same ones were left
    unread at every poll and never metered. Found by a review."""
    pve.state.vms = [SimVM(f"pve{i % 2 + 1}", 100 + i, f"fw{i}", description=f"tr7.instance: TR7-{i:03d}")
                     for i in range(40)]
    pve.state.latency = 0.1  # 2 workers: ~20 reads a second, about half the cluster a poll
    adapter = make_adapter(timeout=1.2, workers=2)
    ever: set[str] = set()
    for _ in range(8):
        result = adapter.poll()
        ever |= {o.instance for o in result.observations}
        if len(ever) == 40:
            break
        assert result.error is not None and "unread within the" in result.error
        time.sleep(0.5)  # the last poll's requests in flight end
    assert len(ever) == 40


def test_resources_500_fails_the_poll(pve: Any, make_adapter: Any) -> None:
    pve.state.resources_status = 500
    with pytest.raises(AdapterError, match="HTTP 500"):
        make_adapter().poll()


def test_malformed_json_fails_the_poll(pve: Any, make_adapter: Any) -> None:
    pve.state.resources_body = b'{"data": [{"type": "qemu", "vmid": 1'
    with pytest.raises(AdapterError, match="malformed"):
        make_adapter().poll()


def test_zero_vms(pve: Any, make_adapter: Any) -> None:
    result = make_adapter().poll()
    assert result.observations == [] and result.error is None


def test_thousands_of_vms(pve: Any, make_adapter: Any) -> None:
    pve.state.vms = [
        SimVM(f"pve{i % 3 + 1}", 1000 + i, f"vm{i}", status="running" if i % 2 else "stopped",
              description=tagged(f"TR7-{i:05d}") if i % 10 == 0 else "plain VM")
        for i in range(2000)
    ]
    result = make_adapter(timeout=120).poll()
    assert result.error is None
    assert sorted(o.instance for o in result.observations) == [f"TR7-{i:05d}" for i in range(0, 2000, 10)]
    assert all(o.vm == f"{o.host}/{1000 + int(o.instance[4:])}" for o in result.observations)


def test_tls_verified_by_default(pve: Any, make_adapter: Any) -> None:
    # no ca_file: the system trust store does not know the simulator's CA
    with pytest.raises(UnreachableError, match="TLS"):
        make_adapter(ca_file=None).poll()


def test_tls_with_another_ca_fails(pve: Any, make_adapter: Any, tmp_path: Any) -> None:
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    with pytest.raises(UnreachableError, match="TLS"):
        make_adapter(ca_file=str(other)).poll()


def test_ca_file_makes_tls_pass_and_verify_off_skips_it(pve: Any, make_adapter: Any) -> None:
    pve.state.vms = cluster()
    assert seen(make_adapter().poll()) == EXPECTED
    with pytest.warns(InsecureRequestWarning):  # the request really went out unverified
        assert seen(make_adapter(ca_file=None, verify_tls=False).poll()) == EXPECTED


@pytest.mark.parametrize("bad", [
    {"url": "http://pve:8006"},
    {"url": "https://pve:8006/somewhere"},
    {"username": "root@pam"},  # both auth methods
    {"token_id": "no-bang"},
    {"token_secret": None},
    {"verify_tls": False},  # with ca_file
    {"colour": "blue"},  # extra keys are forbidden
])
def test_config_rejects(bad: dict[str, Any]) -> None:
    cfg = {"name": "p", "platform": "proxmox", "url": "https://pve:8006", "token_id": "u@pve!t",
           "token_secret": "x", "ca_file": "/etc/ca.pem"} | bad
    with pytest.raises(ValidationError):
        ProxmoxConfig(**{k: v for k, v in cfg.items() if v is not None})


def test_every_config_field_is_described() -> None:
    assert all(f.description for f in ProxmoxConfig.model_fields.values())


def test_expired_ticket_fails_once_then_logs_in_again(pve: Any, make_adapter: Any) -> None:
    pve.state.vms = cluster()
    adapter = make_adapter(token_id=None, token_secret=None, username="tr7@pve", password="s3cret")
    assert adapter.poll().error is None
    pve.state.tickets.clear()  # the cluster forgot the ticket (expired, or pve-cluster restarted)
    with pytest.raises(AuthError):
        adapter.poll()
    assert seen(adapter.poll()) == EXPECTED
    assert pve.state.requests.count(("POST", "/api2/json/access/ticket")) == 2


def test_unreadable_secret_file_is_a_config_error(pve: Any, make_adapter: Any, tmp_path: Any) -> None:
    with pytest.raises(ConfigError, match="token_secret"):
        make_adapter(token_secret=None, token_secret_file=str(tmp_path / "missing")).poll()


@pytest.mark.parametrize("login", ["token", "password"])
def test_environment_proxy_is_not_used(pve: Any, make_adapter: Any, closed_port: int,
                                       monkeypatch: pytest.MonkeyPatch, login: str) -> None:
    # an agent host may export HTTPS_PROXY for other traffic; the PVE API is reached directly
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(var, f"http://127.0.0.1:{closed_port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    pve.state.vms = cluster()
    extra = {} if login == "token" else {"token_id": None, "token_secret": None, "username": "tr7@pve",
                                         "password": "s3cret"}
    assert seen(make_adapter(**extra).poll()) == EXPECTED


def test_docs_sample_table_is_valid() -> None:
    import re
    import tomllib
    from pathlib import Path

    page = (Path(__file__).parents[3] / "docs/adapters/proxmox.md").read_text()
    [block] = re.findall(r"```toml\n(.*?)```", page, re.S)
    [table] = tomllib.loads(block)["adapters"]
    assert ProxmoxConfig.model_validate(table).token_id == "tr7-meter@pve!metering"


def test_a_vm_that_says_it_stopped_is_not_running_while_the_cluster_list_lags(
    pve: Any, make_adapter: Any
) -> None:
    """cluster/resources is refreshed every ~10 s: just after a stop it still says running, while
    the VM's own status/current says stopped, with no qmpstatus (it was billed running)."""
    pve.state.vms = [SimVM("pve1", 100, "tr7-a", current="stopped", description=tagged("TR7-A")),
                     SimVM("pve1", 101, "tr7-b", current="unknown", description=tagged("TR7-B"))]
    result = make_adapter().poll()
    assert result.error is None
    states = {(o.instance, o.state) for o in result.observations}
    assert states == {("TR7-A", "stopped"), ("TR7-B", "unknown")}


@pytest.mark.parametrize("login", ["token", "password"])
def test_an_api_that_drips_its_answer_is_cut_off_at_the_timeout(pve: Any, make_adapter: Any,
                                                                 login: str) -> None:
    """requests' timeout bounds each read, not the answer: a byte every 50 ms held a 3 s poll ~160 s."""
    pve.state.vms = cluster()
    pve.state.resources_drip = 0.05
    extra = {} if login == "token" else {"token_id": None, "token_secret": None, "username": "tr7@pve",
                                         "password": "s3cret"}
    started = time.monotonic()
    with pytest.raises(UnreachableError, match="cluster/resources: no answer within the poll timeout"):
        make_adapter(timeout=2, **extra).poll()
    assert time.monotonic() - started < 10  # bounded by the timeout, not by the answer's length


def test_the_password_login_trusts_ca_file_not_the_environment(
    pve: Any, make_adapter: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """proxmoxer's ticket login is a module-level requests.post, which read REQUESTS_CA_BUNDLE: the
    password went to whatever that CA vouched for, ca_file aside (proxmox.md says it is ignored)."""
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(other))
    pve.state.vms = cluster()
    by_password = {"token_id": None, "token_secret": None, "username": "tr7@pve", "password": "s3cret"}
    assert seen(make_adapter(**by_password).poll()) == EXPECTED
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", pve.ca_file)
    with pytest.raises(UnreachableError, match="TLS"):  # the configured CA decides, both ways
        make_adapter(**by_password, ca_file=str(other)).poll()


def test_a_missing_ca_file_is_a_config_error_naming_it(make_adapter: Any, tmp_path: Any) -> None:
    """It was "login: OSError"."""
    missing = tmp_path / "gone-ca.pem"
    with pytest.raises(ConfigError, match=f"ca_file: cannot read {missing}: No such file"):
        make_adapter(ca_file=str(missing)).poll()


def test_a_node_that_drips_its_vms_answers_leaves_the_poll_bounded_and_the_others_read(
    pve: Any, make_adapter: Any
) -> None:
    """The per-VM reads are bounded by the poll's deadline too (their pool is not waited for): a node
    answering a byte every 50 ms costs its own VMs, not the poll's timeout; the next poll works."""
    pve.state.vms = cluster()
    pve.state.node_drip["pve2"] = 0.05
    adapter = make_adapter(timeout=2)
    started = time.monotonic()
    result = adapter.poll()
    assert time.monotonic() - started < 5  # 0.9 x timeout 2 s, and slack for a loaded machine
    assert result.error is not None
    assert "node pve2:" in result.error and "unread within the 2s" in result.error
    assert seen(result) == {e for e in EXPECTED if e[2] != "pve2"}
    pve.state.node_drip.clear()
    assert seen(make_adapter(timeout=2).poll()) == EXPECTED


def test_reads_left_on_a_dripping_node_are_not_added_to_at_every_poll(pve: Any, make_adapter: Any) -> None:
    """A review: each poll started its node's share of reads again beside the earlier polls' reads
    still dripping, a share more threads a poll without end. They count against the node's share now."""
    pve.state.vms = cluster()
    pve.state.node_drip["pve2"] = 0.05
    before = set(threading.enumerate())  # an earlier test's dripped reads may still be ending
    adapter = make_adapter(timeout=1.5, workers=8)  # 3 nodes: 2 reads at a time a node
    first = adapter.poll()
    assert first.error is not None
    assert "node pve2: 4 VM config(s) unread within the 1.5s timeout" in first.error
    for _ in range(3):
        result = adapter.poll()
        assert result.error is not None
        assert ("node pve2: 4 VM config(s) unread within the 1.5s timeout (2 read(s) of earlier polls still "
                "waiting for the node)") in result.error
        assert seen(result) == {e for e in EXPECTED if e[2] != "pve2"}
    assert len([r for r in pve.state.requests if "/nodes/pve2/" in r[1]]) == 2
    for _ in range(100):  # the last pools' idle threads are ending; the dripped reads' stay
        reads = [t for t in set(threading.enumerate()) - before
                 if t.name.startswith(f"pve-{adapter.name}") and t.is_alive()]
        if len(reads) <= 2:
            break
        time.sleep(0.02)
    assert len(reads) == 2
    pve.state.node_drip.clear()
    pve.state.calm.set()  # the dripped answers end at once; then the node's VMs are read again
    for _ in range(200):
        result = adapter.poll()
        if seen(result) == EXPECTED:
            break
        time.sleep(0.1)
    assert seen(result) == EXPECTED and result.error is None


def test_a_poll_that_read_every_vm_does_not_wait_for_an_earlier_polls_read(pve: Any,
                                                                          make_adapter: Any) -> None:
    """A review: a read of an earlier poll still running (one VM's, slow once) was waited for by the
    next poll until its deadline, though that poll had read every VM: 0.9 x timeout a poll."""
    pve.state.vms = cluster()
    adapter = make_adapter(timeout=2, workers=8)  # 3 nodes: 2 reads at a time a node
    read, release, first = adapter._read_vm, threading.Event(), []

    def read_vm(api: Any, r: dict[str, Any]) -> Any:
        if str(r["vmid"]) == "101" and not first:  # web01 on pve1: slow once
            first.append(1)
            release.wait(20)
        return read(api, r)

    adapter._read_vm = read_vm
    try:
        assert "node pve1: 1 VM config(s) unread" in (adapter.poll().error or "")
        started = time.monotonic()
        result = adapter.poll()
        assert time.monotonic() - started < 1.5  # not the 1.8 s deadline
        assert result.error is None and seen(result) == EXPECTED
    finally:
        release.set()
