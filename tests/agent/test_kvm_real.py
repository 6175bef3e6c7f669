"""The agent with the real KVM adapter on libvirt's test:/// driver (no fake adapter)."""

import json
import os
from pathlib import Path

from conftest import run_cli, write_config

NODE = """<node>
<domain type="test" xmlns:test="http://libvirt.org/schemas/domain/test/1.0"><name>appliance</name>
<uuid>6f1c9a52-2c4c-4e8e-9a51-0c8a3f0e7b11</uuid><memory>65536</memory><vcpu>1</vcpu>
<os><type>hvm</type></os><metadata><tr7:license xmlns:tr7="urn:tr7:metering:1" instance="tr7-kvm-1"
bundle="pro"/></metadata><test:runstate>1</test:runstate></domain>
<domain type="test" xmlns:test="http://libvirt.org/schemas/domain/test/1.0"><name>web</name>
<uuid>0b3e0f0e-5d7c-4d0a-8a1e-3c2b1a0f9e22</uuid><memory>65536</memory><vcpu>1</vcpu>
<os><type>hvm</type></os><test:runstate>1</test:runstate></domain>
</node>
"""


def test_check_with_libvirt_test_driver(tmp_path: Path) -> None:
    node = tmp_path / "node.xml"
    node.write_text(NODE)
    cfg = write_config(tmp_path / "a.toml", {"state_dir": str(tmp_path / "s")},
                       [{"name": "kvm1", "platform": "kvm", "uri": f"test://{node}"},
                        {"name": "gone", "platform": "kvm", "uri": f"test://{tmp_path}/missing.xml"}])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the real adapters.kvm
    res = run_cli("check", "--config", str(cfg), "--json", env=env)
    out = json.loads(res.stdout)
    assert res.returncode == 1  # the second endpoint fails
    assert out["polls"][0] == {"adapter": "kvm1", "platform": "kvm", "ok": True, "error": None}
    assert out["polls"][1]["ok"] is False and out["polls"][1]["error"]
    assert [(o["instance"], o["vm"], o["state"]) for o in out["observations"]] == [
        ("tr7-kvm-1", "6f1c9a52-2c4c-4e8e-9a51-0c8a3f0e7b11", "running")]
