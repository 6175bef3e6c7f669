"""The Hyper-V adapter against the WS-Management simulator: script, states, quirks, failures, TLS."""

import json
import logging
import sys
import threading
import time
import uuid
from typing import Any

import pytest
import trustme
from pydantic import ValidationError
from spnego.channel_bindings import GssChannelBindings

from adapters.base import AdapterError, AuthError, Capacity, ConfigError, UnreachableError
from adapters.hyperv import HyperVAdapter, HyperVConfig
from adapters.hyperv_ps import decode_clixml
from adapters.registry import adapter_class

wsman_sim: Any = sys.modules["wsman_sim"]  # loaded by conftest.py


def vm(name: str, state: Any, notes: str | None, host: str = "HV1") -> dict[str, Any]:
    return {"Id": str(uuid.uuid5(uuid.NAMESPACE_DNS, name)), "Name": name, "State": state, "Notes": notes,
            "ComputerName": host, "IsClustered": host != "HV1"}


def vmid(name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_DNS, name))


# Get-VM's State as the script sends it (names), and as numbers (older scripts, PowerShell 7 enums)
STATES = [
    ("Running", "running"), (2, "running"), ("Off", "stopped"), (3, "stopped"), ("Paused", "paused"),
    (9, "paused"), ("Saved", "suspended"), (6, "suspended"), ("Starting", "unknown"),
    ("Stopping", "stopped"), ("Saving", "suspended"), (32776, "paused"), ("Resuming", "unknown"),
    ("Reset", "running"), ("FastSaved", "suspended"), ("Hibernated", "suspended"),
    ("RunningCritical", "running"), ("OffCritical", "stopped"), ("Other", "unknown"),
    ("ComponentServicing", "unknown"), (12345, "unknown"), ("Warp", "unknown"), (None, "unknown"),
]


def host_vms() -> list[dict[str, Any]]:
    return [
        vm("edge-a", "Running", "TR7 edge\r\ntr7.instance: TR7-A\r\ntr7.bundle: ent\r\n"
                                "tr7.bandwidth_mbps: 1000\r\ntr7.vservices: 8"),
        vm("web01", "Running", "IIS front end"),
        vm("db01", "Off", None),
        vm("edge-bad", "Running", "tr7.instance: not valid!"),
        vm("edge-bw", "Running", "tr7.instance: TR7-BW\ntr7.bandwidth_mbps: 1Gbit\ntr7.bundle: entreprise-é"),
    ]


def seen(result: Any) -> set[tuple[Any, ...]]:
    return {(o.instance, o.vm, o.host, o.state, o.capacity) for o in result.observations}


def test_registry_finds_the_module() -> None:
    assert adapter_class("hyperv") is HyperVAdapter


def test_recognition_over_one_powershell_run(wsman: Any, make_adapter: Any) -> None:
    wsman.state.vms = host_vms()
    result = make_adapter().poll()
    assert result.error is None
    assert seen(result) == {
        ("TR7-A", vmid("edge-a"), "HV1", "running", Capacity("ent", 1000, 8)),
        # non-ASCII Notes survive (base64 UTF-8); the bad bandwidth is left out of capacity
        ("TR7-BW", vmid("edge-bw"), "HV1", "running", Capacity(bundle="entreprise-é")),
    }
    [script] = wsman.state.scripts  # exactly one PowerShell invocation per poll
    assert "Get-VM" in script and "ConvertTo-Json" in script and "Get-ClusterNode" not in script
    # the whole WinRS lifecycle, and the shell is deleted afterwards
    acts = wsman.state.actions
    assert acts[:2] == ["Create", "Command"] and acts[-2:] == ["Signal", "Delete"]
    assert set(acts[2:-2]) == {"Receive"} and not wsman.state.open_shells


@pytest.mark.parametrize(("state", "expected"), STATES)
def test_every_state(wsman: Any, make_adapter: Any, state: Any, expected: str) -> None:
    wsman.state.vms = [vm("x", state, "tr7.instance: TR7-X")]
    [obs] = make_adapter().poll().observations
    assert obs.state == expected


def test_malformed_values_logged_once_across_polls(wsman: Any, make_adapter: Any,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    wsman.state.vms = host_vms()
    adapter = make_adapter()
    with caplog.at_level(logging.WARNING, logger="tr7.adapters"):
        adapter.poll()
        adapter.poll()
    bad = [r for r in caplog.records if vmid("edge-bad") in r.getMessage()]
    bw = [r for r in caplog.records if vmid("edge-bw") in r.getMessage()]
    assert len(bad) == 1 and "skipped" in bad[0].getMessage()
    assert len(bw) == 1 and "bandwidth_mbps" in bw[0].getMessage()


def test_wrong_password_is_auth_error(wsman: Any, make_adapter: Any) -> None:
    with pytest.raises(AuthError):
        make_adapter(password="wrong").poll()


def test_password_file_from_credentials_directory(wsman: Any, make_adapter: Any, tmp_path: Any,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "hv-password").write_text(wsman.state.password + "\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert make_adapter(password=None, password_file="hv-password").poll().error is None


def test_closed_port_is_unreachable(make_adapter: Any, closed_port: int) -> None:
    with pytest.raises(UnreachableError):
        make_adapter(url=f"https://127.0.0.1:{closed_port}/wsman").poll()


def test_soap_fault_is_an_adapter_error_with_its_reason(wsman: Any, make_adapter: Any) -> None:
    reason = ("The WS-Management service cannot process the request. "
              "The maximum number of concurrent shells has been exceeded.")
    wsman.state.fault = (500, "w:QuotaLimit", reason, 2150859173)
    with pytest.raises(AdapterError, match="concurrent shells") as info:
        make_adapter().poll()
    assert not isinstance(info.value, AuthError | UnreachableError)


def test_access_denied_fault_is_auth_error(wsman: Any, make_adapter: Any) -> None:
    wsman.state.fault = (500, "w:AccessDenied", "Access is denied.", 5)
    with pytest.raises(AuthError):
        make_adapter().poll()


def test_permission_error_from_powershell_is_auth_error(wsman: Any, make_adapter: Any) -> None:
    msg = ("You do not have the required permission to complete this task. Contact the administrator "
           "of the authorization policy for the computer 'HV1'.")
    wsman.state.exit_code, wsman.state.stderr = 1, wsman_sim.clixml_error(msg)
    with pytest.raises(AuthError) as info:
        make_adapter().poll()
    assert "required permission" in str(info.value) and "_x000D_" not in info.value.diagnostic
    assert not wsman.state.open_shells


def test_nonzero_exit_is_an_adapter_error_with_the_decoded_message(wsman: Any, make_adapter: Any) -> None:
    wsman.state.exit_code = 1
    msg = "Hyper-V was unable to find a virtual machine management service."
    wsman.state.stderr = wsman_sim.clixml_error(msg)
    with pytest.raises(AdapterError, match="unable to find a virtual machine management service"):
        make_adapter().poll()


def test_clixml_decoding_drops_progress_and_escapes() -> None:
    assert decode_clixml(wsman_sim.PROGRESS) == ""
    assert decode_clixml(wsman_sim.clixml_error("a_x0009_b")).startswith("Get-VM : a\tb\r\nAt line:4")


def test_malformed_json_is_an_adapter_error(wsman: Any, make_adapter: Any) -> None:
    wsman.state.output_json = '{"vms":[{"Id":"1","Name":'
    with pytest.raises(AdapterError, match="malformed"):
        make_adapter().poll()


def test_non_base64_output_is_an_adapter_error(wsman: Any, make_adapter: Any) -> None:
    wsman.state.raw_stdout = b"WARNING: something unexpected\r\n"
    with pytest.raises(AdapterError, match="malformed"):
        make_adapter().poll()


ONE = vm("solo", "Running", "tr7.instance: TR7-SOLO")


@pytest.mark.parametrize("output", [
    json.dumps({"vms": ONE, "errors": []}),  # ConvertTo-Json: one VM is an object, not an array
    json.dumps(ONE),  # a bare single object
    json.dumps([ONE]),  # a bare array
    json.dumps({"vms": {"value": [ONE], "Count": 1}, "errors": None}),  # PS 5.1 ETS-wrapped array
])
def test_single_vm_shapes(wsman: Any, make_adapter: Any, output: str) -> None:
    wsman.state.output_json = output
    assert [o.instance for o in make_adapter().poll().observations] == ["TR7-SOLO"]


@pytest.mark.parametrize("output", ["", json.dumps({"vms": None, "errors": []}),
                                    json.dumps({"vms": [], "errors": []})])
def test_zero_vms(wsman: Any, make_adapter: Any, output: str) -> None:
    wsman.state.output_json = output
    result = make_adapter().poll()
    assert result.observations == [] and result.error is None


def test_zero_vms_from_the_simulated_host(wsman: Any, make_adapter: Any) -> None:
    result = make_adapter().poll()
    assert result.observations == [] and result.error is None


def test_thousands_of_vms_over_several_receives(wsman: Any, make_adapter: Any) -> None:
    wsman.state.vms = [vm(f"vm{i}", "Running" if i % 2 else 3,
                          f"owner: team{i}\ntr7.instance: TR7-{i:05d}" if i % 10 == 0 else f"plain {i}")
                       for i in range(5000)]
    result = make_adapter().poll()
    assert result.error is None
    assert sorted(o.instance for o in result.observations) == [f"TR7-{i:05d}" for i in range(0, 5000, 10)]
    assert {o.state for o in result.observations} == {"stopped"}  # every 10th is even: numeric Off
    assert wsman.state.actions.count("Receive") > 1  # the output came in several chunks


def test_cluster_of_two_nodes(wsman: Any, make_adapter: Any) -> None:
    wsman.state.vms = [*host_vms(), vm("edge-c", "Saved", "tr7.instance: TR7-C", host="HV2")]
    assert {o.host for o in make_adapter().poll().observations} == {"HV1"}  # one host: HV1 only
    result = make_adapter(cluster=True).poll()
    assert result.error is None
    assert {(o.instance, o.host, o.state) for o in result.observations} == {
        ("TR7-A", "HV1", "running"), ("TR7-BW", "HV1", "running"), ("TR7-C", "HV2", "suspended")}
    script = wsman.state.scripts[-1]
    assert "Get-ClusterNode" in script and "Get-VM -ComputerName" in script


def test_cluster_node_down_is_a_partial_error(wsman: Any, make_adapter: Any) -> None:
    wsman.state.vms = [*host_vms(), vm("edge-c", "Running", "tr7.instance: TR7-C", host="HV2")]
    wsman.state.down_nodes.add("HV2")
    result = make_adapter(cluster=True).poll()
    assert result.error is not None and "HV2" in result.error
    assert {o.instance for o in result.observations} == {"TR7-A", "TR7-BW"}


def test_operation_timeouts_are_retried(wsman: Any, make_adapter: Any) -> None:
    wsman.state.vms = host_vms()
    wsman.state.receive_timeouts = 2
    assert len(make_adapter().poll().observations) == 2


def test_a_hanging_command_times_out_and_the_shell_is_deleted(wsman: Any, make_adapter: Any) -> None:
    wsman.state.hang = True
    with pytest.raises(UnreachableError, match="timeout"):
        make_adapter(timeout=1).poll()
    settled(wsman)  # deleted behind the poll: its error is given first
    assert "Delete" in wsman.state.actions and not wsman.state.open_shells


def test_a_listener_holding_each_receive_does_not_stretch_the_timeout(wsman: Any, make_adapter: Any) -> None:
    """WinRM holds a Receive for the client's OperationTimeout (up to 20 s here): checked only
    between Receives, a 10 s poll ended after 18 s and a 30 s one after 40 s. Found by a review."""
    wsman.state.hang = wsman.state.hold = True
    started = time.monotonic()
    with pytest.raises(UnreachableError, match="timeout"):
        make_adapter(timeout=6).poll()
    assert time.monotonic() - started < 8.5  # the last Receive asked for what was left, not 5 s more


def test_a_slow_script_says_so_though_stopping_it_is_slow_too(wsman: Any, make_adapter: Any) -> None:
    """A diff review: the shell was deleted (Signal, Delete) before the script's error was given, and a
    busy host's slow Signal turned "script unfinished" into "no answer within the poll timeout", then
    "the previous poll's attempt is still waiting" at the next poll. The error comes first now."""
    wsman.state.hang = True
    wsman.state.drip, wsman.state.drip_actions = 0.003, {"Signal"}  # stopping PowerShell takes ~1.5 s
    adapter = make_adapter(timeout=4)
    with pytest.raises(UnreachableError) as err:
        adapter.poll()
    assert err.value.reason == "timeout" and "script unfinished" in (err.value.diagnostic or ""), err.value
    wsman.state.calm.set()
    settled(wsman)


def settled(wsman: Any, shells: int = 0) -> None:
    """Wait until the simulator has no more than ``shells`` open (a poll's shell deleted behind it)."""
    for _ in range(200):
        if len(wsman.state.open_shells) <= shells:
            return
        time.sleep(0.05)
    raise AssertionError(f"shells still open: {wsman.state.open_shells}")


@pytest.mark.parametrize("action", ["Create", "Command", "Receive"])
def test_a_listener_dripping_its_answer_is_cut_off_at_the_timeout(wsman: Any, make_adapter: Any,
                                                                   action: str) -> None:
    """requests' timeout bounds each read, not the answer: a listener (or a proxy before it) sending a
    byte every 20 ms held a 2 s poll for 30 s and more, while the agent said only "previous poll still
    running". Cut off at the deadline; the shell is deleted once the call ends, and the next poll works."""
    wsman.state.vms = host_vms()
    wsman.state.drip, wsman.state.drip_actions = 0.02, {action}
    adapter = make_adapter(timeout=2)
    started = time.monotonic()
    with pytest.raises(UnreachableError, match="no answer within the poll timeout"):
        adapter.poll()
    assert time.monotonic() - started < 5  # 0.9 x timeout 2 s, and slack for a loaded machine
    with pytest.raises(UnreachableError, match="the previous poll's attempt is still waiting"):
        adapter.poll()  # one call left waiting on the listener, not one more per poll
    wsman.state.calm.set()  # the listener is well again: the late call ends, its shell is deleted
    settled(wsman)
    for _ in range(100):
        try:
            assert len(adapter.poll().observations) == 2
            break
        except UnreachableError:  # the late call's thread still ending
            time.sleep(0.05)
    else:
        raise AssertionError("no poll succeeded once the listener was well")
    settled(wsman)


def test_a_dripping_shell_deletion_does_not_hold_the_poll(wsman: Any, make_adapter: Any) -> None:
    """The output was read: the deletion of the shell goes on behind the poll, which answers by its
    deadline. A review: each poll left one more such deletion running, without end; two at most now,
    the others waiting their turn (a second review: skipped, their shells stayed on the host)."""
    wsman.state.vms = host_vms()
    wsman.state.drip, wsman.state.drip_actions = 0.02, {"Signal", "Delete"}
    before = set(threading.enumerate())  # an earlier test's deletions may still be ending
    adapter = make_adapter(timeout=2)
    for _ in range(4):
        started = time.monotonic()
        assert len(adapter.poll().observations) == 2
        assert time.monotonic() - started < 5  # 0.9 x timeout 2 s, and slack for a loaded machine
    cleanups = [t for t in set(threading.enumerate()) - before
                if t.name.startswith("hv-cleanup-") and t.is_alive()]
    assert len(cleanups) == 2
    wsman.state.calm.set()
    settled(wsman)  # every poll's shell deleted once the listener answers


def test_tls_verified_by_default(wsman: Any, make_adapter: Any) -> None:
    with pytest.raises(UnreachableError, match="TLS"):
        make_adapter(ca_file=None).poll()


def test_tls_with_another_ca_fails(wsman: Any, make_adapter: Any, tmp_path: Any) -> None:
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    with pytest.raises(UnreachableError, match="TLS"):
        make_adapter(ca_file=str(other)).poll()


def test_ca_file_makes_tls_pass_and_verify_off_skips_it(wsman: Any, make_adapter: Any) -> None:
    wsman.state.vms = host_vms()
    assert len(make_adapter().poll().observations) == 2
    assert len(make_adapter(ca_file=None, verify_tls=False).poll().observations) == 2


@pytest.mark.parametrize("bad", [
    {"url": "http://hv1:5985/wsman"},
    {"url": "https://hv1:5986/other"},
    {"transport": "plaintext"},
    {"password": None},
    {"transport": "kerberos"},  # with a password, which Kerberos would ignore
    {"verify_tls": False},  # with ca_file
    {"colour": "blue"},
])
def test_config_rejects(bad: dict[str, Any]) -> None:
    cfg = {"name": "h", "platform": "hyperv", "url": "https://hv1:5986/wsman", "username": "u",
           "password": "p", "ca_file": "/etc/ca.pem"} | bad
    with pytest.raises(ValidationError):
        HyperVConfig(**{k: v for k, v in cfg.items() if v is not None})


def test_kerberos_config_takes_no_password() -> None:
    c = HyperVConfig(name="h", platform="hyperv", url="https://hv1.example.com:5986/wsman",
                     username="tr7-meter@EXAMPLE.COM", transport="kerberos")
    assert c.password is None and c.password_file is None


def test_config_defaults_and_url_normalised() -> None:
    c = HyperVConfig(name="h", platform="hyperv", url="https://hv1.example:5986", username="u", password="p")
    assert c.url == "https://hv1.example:5986/wsman"
    assert (c.transport, c.verify_tls, c.cluster) == ("ntlm", True, False)
    # no port: WinRM's HTTPS listener's (5986), as winrs takes it; https's 443 failed every poll
    for url, want in (("https://hv1.example", "https://hv1.example:5986/wsman"),
                      ("https://[fd00::7]/wsman", "https://[fd00::7]:5986/wsman"),
                      ("https://hv1.example:443", "https://hv1.example:443/wsman")):
        assert HyperVConfig(name="h", platform="hyperv", url=url, username="u", password="p").url == want
    for bad in ("https://hv1:/wsman", "https://hv1:99999", "https://[fd00::7]:"):
        with pytest.raises(ValidationError, match="port"):
            HyperVConfig(name="h", platform="hyperv", url=bad, username="u", password="p")
    assert all(f.description for f in HyperVConfig.model_fields.values())


def test_ntlm_the_default_transport(wsman: Any, make_adapter: Any, ntlm_users: None) -> None:
    wsman.state.vms = host_vms()
    result = make_adapter(transport=None).poll()  # default: ntlm, with channel binding over TLS
    assert {o.instance for o in result.observations} == {"TR7-A", "TR7-BW"}
    with pytest.raises(AuthError):
        make_adapter(transport=None, password="wrong").poll()


def test_ntlm_refused_when_channel_binding_differs(wsman: Any, make_adapter: Any, ntlm_users: None) -> None:
    # as HTTP.sys with Extended Protection: a response bound to another certificate is refused
    wsman.state.channel_bindings = GssChannelBindings(application_data=b"tls-server-end-point:" + b"\0" * 32)
    with pytest.raises(AuthError):
        make_adapter(transport=None).poll()


@pytest.mark.parametrize(("transport", "flag"), [("credssp", "HAVE_CREDSSP"), ("kerberos", "HAVE_KERBEROS")])
def test_transport_without_its_package_is_a_config_error(wsman: Any, make_adapter: Any,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          transport: str, flag: str) -> None:
    # pywinrm's optional extras (requests-credssp, pykerberos) absent: say what to install
    monkeypatch.setattr(f"winrm.transport.{flag}", False)
    with pytest.raises(ConfigError, match=rf"pywinrm\[{transport}\]"):
        if transport == "kerberos":
            make_adapter(transport=transport, password=None).poll()
        else:
            make_adapter(transport=transport).poll()


def test_unreadable_password_file_is_a_config_error(wsman: Any, make_adapter: Any, tmp_path: Any) -> None:
    with pytest.raises(ConfigError, match="password"):
        make_adapter(password=None, password_file=str(tmp_path / "missing")).poll()


def test_docs_show_the_script_the_adapter_runs() -> None:
    from pathlib import Path

    from adapters.hyperv_ps import build_script
    page = (Path(__file__).parents[3] / "docs/adapters/hyperv.md").read_text()
    assert build_script(True) in page and "$vms=@(Get-VM)" in page


def test_environment_proxy_is_not_used(wsman: Any, make_adapter: Any, closed_port: int,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(var, f"http://127.0.0.1:{closed_port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    wsman.state.vms = host_vms()
    assert len(make_adapter().poll().observations) == 2


def test_docs_sample_table_is_valid() -> None:
    import re
    import tomllib
    from pathlib import Path

    page = (Path(__file__).parents[3] / "docs/adapters/hyperv.md").read_text()
    [block] = re.findall(r"```toml\n(.*?)```", page, re.S)
    [table] = tomllib.loads(block)["adapters"]
    assert HyperVConfig.model_validate(table).username == "EXAMPLE\\tr7-meter"


def test_credssp_delegates_the_password(wsman: Any, make_adapter: Any, ntlm_users: None) -> None:
    # the transport that lets a cluster node query the others (second hop): TLS, NTLM, credentials
    wsman.state.auth = "credssp"
    wsman.state.vms = host_vms()
    assert len(make_adapter(transport="credssp").poll().observations) == 2
    [creds] = wsman.state.delegated
    assert (creds.username, creds.password) == ("tr7-meter", wsman.state.password)
    with pytest.raises(AuthError):
        make_adapter(transport="credssp", password="wrong").poll()
