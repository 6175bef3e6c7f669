"""The vSphere adapter against vcsim refusing some VMs' properties (missingSet NoPermission)."""

import importlib.util
import logging
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyVmomi import vim, vmodl

import adapters.vsphere_pc as vsphere_pc
from adapters.vmware import ADAPTER

DENY = "denied-"


def _load_helper() -> Any:
    # tests/ is not a package; the same module object as test_vmware.py's when both run
    name = "tr7_tests_vcsim"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).parent / "vsphere" / "vcsim.py")
        assert spec and spec.loader
        sys.modules[name] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules[name]


vcsim = _load_helper()


def make(url: str, name: str = "vc") -> Any:
    return ADAPTER(ADAPTER.Config(name=name, platform="vmware", url=url, username=vcsim.USER,
                                  password=vcsim.PASSWORD))


def by_instance(result: Any) -> dict[str, Any]:
    return {o.instance: o for o in result.observations}


@pytest.fixture(scope="module")
def sim() -> Iterator[Any]:
    # pages of 2 objects: refused VMs arrive in ContinueRetrievePropertiesEx pages too
    server = vcsim.start(vms=6, hosts=2, page=2, deny=DENY)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def inv(sim: Any) -> Iterator[dict[str, Any]]:
    """Two readable TR7 VMs, two refused ones (one tagged by custom attribute), one refused untagged."""
    si = vcsim.connect(sim.url)
    vms = vcsim.all_vms(si)
    cfm = si.content.customFieldsManager
    key = cfm.AddCustomFieldDef(name="tr7.instance", moType=vim.VirtualMachine).key
    vcsim.tag(vms[0], instance="tr7-open", bundle="enterprise")
    cfm.SetField(entity=vms[1], key=key, value="tr7-open-attr")
    vcsim.tag(vms[2], instance="tr7-refused")
    cfm.SetField(entity=vms[3], key=key, value="tr7-refused-attr")
    uuids = [vm.config.instanceUuid for vm in vms]  # read while everything is still readable
    for i in (2, 3, 4):
        vcsim.rename(vms[i], f"{DENY}{i}")  # from now on their properties are refused
    yield {"si": si, "vms": vms, "uuids": uuids, "refused": [vms[2], vms[3], vms[4]]}
    vcsim.disconnect(si)


def test_simulator_refuses_like_vcenter(sim: Any, inv: dict[str, Any]) -> None:
    """Guard: vcsim answers a refused VM the way vCenter does, else the tests below prove nothing."""
    pc = vmodl.query.PropertyCollector
    content = inv["si"].content
    refused, readable = inv["refused"][0], inv["vms"][0]
    props = pc.PropertySpec(type=vim.VirtualMachine, pathSet=list(vsphere_pc.VM_PROPS))
    spec = pc.FilterSpec(propSet=[props],
                         objectSet=[pc.ObjectSpec(obj=refused), pc.ObjectSpec(obj=readable)])
    objects = {o.obj._moId: o for o in content.propertyCollector.RetrievePropertiesEx(
        [spec], pc.RetrieveOptions()).objects}
    denied = objects[refused._moId]
    assert not denied.propSet
    assert sorted(m.path for m in denied.missingSet) == sorted(vsphere_pc.VM_PROPS)
    for missing in denied.missingSet:  # pyVmomi unwraps the LocalizedMethodFault
        assert isinstance(missing.fault, vim.fault.NoPermission)
        assert missing.fault.privilegeId == "System.Read"
        assert missing.fault.object._moId == refused._moId
    assert not objects[readable._moId].missingSet
    assert {p.name for p in objects[readable._moId].propSet} >= {"config.instanceUuid", "runtime.powerState"}
    with pytest.raises(vim.fault.NoPermission):
        refused.config  # noqa: B018 - pyVmomi's single read (Fetch) is refused too
    assert readable.config.instanceUuid == inv["uuids"][0]


def test_refused_vms_are_not_reported_and_the_poll_is_partial(sim: Any, inv: dict[str, Any]) -> None:
    result = make(sim.url).poll()
    seen = by_instance(result)
    assert set(seen) == {"tr7-open", "tr7-open-attr"}
    assert seen["tr7-open"].vm == inv["uuids"][0] and seen["tr7-open"].state == "running"
    assert seen["tr7-open-attr"].vm == inv["uuids"][1]
    assert not {o.vm for o in result.observations} & set(inv["uuids"][2:5])
    # the untagged refused VM counts too: nobody can tell it is not a TR7 instance
    assert result.error == "3 VMs could not be read: NoPermission System.Read"


def test_each_refused_vm_is_logged_once_with_what_was_refused(sim: Any, inv: dict[str, Any],
                                                              caplog: pytest.LogCaptureFixture) -> None:
    adapter = make(sim.url, name="vc-log")
    with caplog.at_level(logging.WARNING, logger="tr7.adapters"):
        adapter.poll()
        adapter.poll()
    lines = [r.getMessage() for r in caplog.records if "NoPermission" in r.getMessage()]
    assert len(lines) == 3
    for vm in inv["refused"]:
        (line,) = [m for m in lines if f"vm {vm._moId}:" in m]
        assert line.startswith("adapter vc-log: ")
        assert "NoPermission System.Read on config.instanceUuid, config.template" in line
        assert "runtime.powerState" in line and line.endswith("not reported while refused")


def test_granting_read_reports_the_vm_again(sim: Any, inv: dict[str, Any]) -> None:
    adapter = make(sim.url, name="vc-grant")
    vm = inv["refused"][0]
    assert "tr7-refused" not in by_instance(adapter.poll())
    vcsim.rename(vm, "granted-2")
    try:
        result = adapter.poll()
        assert by_instance(result)["tr7-refused"].vm == inv["uuids"][2]
        assert result.error == "2 VMs could not be read: NoPermission System.Read"
    finally:
        vcsim.rename(vm, f"{DENY}2")
    assert "tr7-refused" not in by_instance(adapter.poll())


def test_one_refused_property_drops_the_vm_instead_of_guessing() -> None:
    """Only the power state refused: the VM's id and tags are readable, but a guessed state would
    turn its hours from unknown into inactive, so it is not reported."""
    server = vcsim.start(vms=2, hosts=1, deny=DENY, deny_paths=("runtime.powerState",))
    try:
        si = vcsim.connect(server.url)
        vms = vcsim.all_vms(si)
        vcsim.tag(vms[0], instance="tr7-a")
        vcsim.tag(vms[1], instance="tr7-b")
        vcsim.rename(vms[1], f"{DENY}b")
        assert vms[1].config.instanceUuid  # the other properties stay readable
        with pytest.raises(vim.fault.NoPermission):
            vms[1].runtime.powerState  # noqa: B018
        result = make(server.url).poll()
        assert set(by_instance(result)) == {"tr7-a"}
        assert result.error == "1 VM could not be read: NoPermission System.Read"
        vcsim.disconnect(si)
    finally:
        server.stop()


def test_without_the_flag_nothing_is_refused() -> None:
    server = vcsim.start(vms=2, hosts=1)
    try:
        si = vcsim.connect(server.url)
        vms = vcsim.all_vms(si)
        vcsim.tag(vms[1], instance="tr7-b")
        vcsim.rename(vms[1], f"{DENY}b")
        assert vms[1].runtime.powerState == "poweredOn"
        result = make(server.url).poll()
        assert result.error is None
        assert by_instance(result)["tr7-b"].vm == vms[1].config.instanceUuid
        vcsim.disconnect(si)
    finally:
        server.stop()


def test_refused_custom_attribute_names_make_the_poll_partial() -> None:
    """vcsim refuses VMs only; this is the CustomFieldsManager object as vCenter would send it
    refused (no field names: VMs tagged by custom attribute would otherwise vanish silently)."""
    xml = ('<objects xmlns="urn:vim25" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
           '<obj type="CustomFieldsManager">CustomFieldsManager</obj><missingSet><path>field</path>'
           '<fault><fault xsi:type="NoPermission"><object type="CustomFieldsManager">CustomFieldsManager'
           '</object><privilegeId>System.View</privilegeId></fault></fault></missingSet></objects>')
    obj = vsphere_pc.read_object(ET.fromstring(xml))
    assert obj == ("CustomFieldsManager", "CustomFieldsManager", {},
                   [("field", "NoPermission", "System.View")])
    result = make("http://127.0.0.1:1/sdk")._observe([obj])
    assert result.observations == []
    assert result.error == "custom attribute names could not be read: NoPermission System.View on field"
