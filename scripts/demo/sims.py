"""The demo's simulated platforms: libvirt's test driver, moto's EC2 server, the govmomi vCenter."""

import importlib.util
import re
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any
from xml.sax.saxutils import quoteattr

from scripts.demo.run import BIN, ROOT, DemoError, Processes, Progress, http_ok, wait_until

TR7_NS = "urn:tr7:metering:1"
TEST_NS = "http://libvirt.org/schemas/domain/test/1.0"
AWS_KEY, AWS_SECRET = "AKIAIOSFODNN7EXAMPLE", "demo-secret"  # moto accepts any key pair
AWS_REGIONS = ["eu-west-1", "eu-central-1"]


@dataclass
class LiveInstance:
    """A TR7 instance the live agent should see, with the capacity it declares."""

    instance: str
    platform: str
    state: str  # as the heartbeat will say it
    bundle: str
    bandwidth_mbps: int
    vservices: int

    def tags(self) -> dict[str, str]:
        return {"instance": self.instance, "bundle": self.bundle,
                "bandwidth_mbps": str(self.bandwidth_mbps), "vservices": str(self.vservices)}


KVM = [
    LiveInstance("TR7-KVM-01", "kvm", "running", "enterprise", 1000, 8),
    LiveInstance("TR7-KVM-02", "kvm", "running", "pro", 200, 10),
    LiveInstance("TR7-KVM-03", "kvm", "paused", "pro", 200, 5),
    LiveInstance("TR7-KVM-04", "kvm", "stopped", "basic", 100, 5),
    LiveInstance("TR7-KVM-05", "kvm", "running", "basic", 100, 2),  # no license: shown as unlicensed
]
AWS = [
    LiveInstance("TR7-AWS-01", "aws", "running", "pro", 1000, 10),  # eu-west-1
    LiveInstance("TR7-AWS-02", "aws", "running", "pro", 500, 10),  # eu-central-1
    LiveInstance("TR7-AWS-03", "aws", "stopped", "basic", 200, 5),  # eu-west-1, stopped
]
VMWARE = [
    LiveInstance("TR7-VC-01", "vmware", "running", "enterprise", 1000, 25),
    LiveInstance("TR7-VC-02", "vmware", "running", "basic", 200, 5),
    LiveInstance("TR7-VC-03", "vmware", "stopped", "pro", 200, 10),
]
_LIBVIRT_STATE = {"running": 1, "paused": 3, "stopped": 5}


@dataclass
class Sims:
    kvm_uri: str = ""
    moto_url: str = ""
    vcsim_url: str = ""
    vcsim_note: str = ""
    live: list[LiveInstance] = field(default_factory=list)


def write_libvirt_node(path: Path) -> str:
    """A node file for libvirt's test:/// driver: TR7 domains in several states and one that is not."""
    doms = []
    for inst in KVM:
        attrs = " ".join(f"{k}={quoteattr(v)}" for k, v in inst.tags().items())
        meta = f'<metadata><tr7:license xmlns:tr7="{TR7_NS}" {attrs}/></metadata>'
        doms.append((inst.instance.lower(), meta, _LIBVIRT_STATE[inst.state]))
    doms.append(("web-frontend", "", 1))  # an ordinary VM: never reported
    xml = "".join(
        f'<domain type="test" xmlns:test="{TEST_NS}"><name>{name}</name><uuid>{uuid.uuid4()}</uuid>'
        f"<memory>65536</memory><vcpu>1</vcpu><os><type>hvm</type></os>{meta}"
        f"<test:runstate>{state}</test:runstate></domain>\n"
        for name, meta, state in doms)
    path.write_text(f"<node>\n{xml}</node>\n")
    return f"test://{path.resolve()}"


def start_moto(procs: Processes, demo: Path) -> str:
    """moto's server on a port it picks itself (-p 0), seeded with tagged EC2 instances."""
    log = demo / "logs" / "moto.log"
    proc = procs.start("moto_server", [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", "0"], log)

    def url() -> str | None:
        m = re.search(r"Running on (http://127\.0\.0\.1:\d+)", log.read_text(errors="replace"))
        return m.group(1) if m else None

    base: str = wait_until("moto_server start", url, 60, proc, log)
    wait_until("moto_server answers", lambda: http_ok(base + "/moto-api/"), 60, proc, log)
    import boto3

    def ec2(region: str) -> Any:
        return boto3.client("ec2", region_name=region, endpoint_url=base, aws_access_key_id=AWS_KEY,
                            aws_secret_access_key=AWS_SECRET)

    placement = {"TR7-AWS-01": "eu-west-1", "TR7-AWS-02": "eu-central-1", "TR7-AWS-03": "eu-west-1"}
    for inst in AWS:
        client = ec2(placement[inst.instance])
        tags = [{"Key": f"tr7.{k}", "Value": v} for k, v in inst.tags().items()]
        answer = client.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1, InstanceType="t3.small",
                                      TagSpecifications=[{"ResourceType": "instance", "Tags": tags}])
        if inst.state == "stopped":
            client.stop_instances(InstanceIds=[answer["Instances"][0]["InstanceId"]])
    ec2("eu-west-1").run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1,  # untagged: not ours
                                   InstanceType="t3.small")
    return base


def _vcsim_helper() -> ModuleType:
    """The tests' simulator helper (build with Debian's Go and govmomi, start, tag through pyVmomi)."""
    path = ROOT / "tests" / "adapters" / "vsphere" / "vcsim.py"
    spec = importlib.util.spec_from_file_location("tr7_demo_vcsim", path)
    if spec is None or spec.loader is None:
        raise DemoError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def start_vcsim(procs: Processes, demo: Path) -> tuple[str, str]:
    """(url, note): the simulator's SDK URL, or "" and why it is left out."""
    try:
        helper = _vcsim_helper()
        if not helper.BIN.exists():
            Progress.info("building the vSphere simulator from tests/vcsim with Debian's Go "
                          "(a few minutes, once)")
        helper.build()
    except subprocess.CalledProcessError as exc:
        err = (exc.stderr or b"").decode(errors="replace").strip().splitlines()[-3:]
        return "", "vcsim could not be built (" + " | ".join(err) + "); the demo goes on without vSphere"
    except (OSError, ImportError, subprocess.TimeoutExpired) as exc:
        return "", f"vcsim could not be built ({exc}); the demo goes on without vSphere"
    vc = helper.start(vms=4, hosts=2, timeout=120)
    procs.add("vcsim", vc.proc, vc.stop)
    si = helper.connect(vc.url)
    try:
        vms = helper.all_vms(si)
        for vm, inst in zip(vms, VMWARE, strict=False):  # the 4th VM stays untagged
            helper.tag(vm, **inst.tags())
            if inst.state == "stopped":
                helper.wait(vm.PowerOffVM_Task())
    finally:
        helper.disconnect(si)
    (demo / "credentials").mkdir(mode=0o700, exist_ok=True)
    pw = demo / "credentials" / "vc-password"
    pw.write_text(helper.PASSWORD)
    pw.chmod(0o600)
    return vc.url, f"user {helper.USER}, password in {pw}"


def start_all(procs: Processes, demo: Path, with_vcsim: bool = True) -> Sims:
    sims = Sims()
    sims.kvm_uri = write_libvirt_node(demo / "libvirt-node.xml")
    sims.live += KVM
    sims.moto_url = start_moto(procs, demo)
    sims.live += AWS
    if with_vcsim:
        sims.vcsim_url, sims.vcsim_note = start_vcsim(procs, demo)
        if sims.vcsim_url:
            sims.live += VMWARE
    else:
        sims.vcsim_note = "vcsim left out (--no-vcsim)"
    return sims
