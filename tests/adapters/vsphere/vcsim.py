"""Build and run the govmomi simulator (tests/vcsim/main.go), and drive it through pyvmomi."""

import fcntl
import json
import os
import selectors
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyVim.connect import Disconnect, SmartConnect
from pyVmomi import vim

from tests import _dripproxy

ROOT = Path(__file__).resolve().parents[3]
SRC = ROOT / "tests" / "vcsim"
BIN = SRC / "bin" / "vcsim"
USER, PASSWORD = "tr7", "s3cret-pw"


def build() -> Path:
    """Build the simulator once (offline, GOPATH mode against Debian's govmomi); rebuild if stale."""
    BIN.parent.mkdir(exist_ok=True)
    with open(BIN.parent / ".lock", "w") as lock:  # the bench and tests may build at once
        fcntl.flock(lock, fcntl.LOCK_EX)
        newest = max(p.stat().st_mtime for p in SRC.glob("*.go"))
        if BIN.exists() and BIN.stat().st_mtime >= newest:
            return BIN
        env = {**os.environ, "GO111MODULE": "off", "GOPATH": "/usr/share/gocode", "GOFLAGS": "",
               "GOPROXY": "off", "GOCACHE": str(BIN.parent / ".gocache")}
        tmp = BIN.with_suffix(".tmp")
        subprocess.run(["go", "build", "-o", str(tmp), "."], cwd=SRC, env=env, check=True,
                       capture_output=True, timeout=600)
        os.replace(tmp, BIN)
    return BIN


@dataclass
class Vcsim:
    proc: subprocess.Popen[bytes]
    url: str

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=120)  # removing thousands of VM directories takes a while
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start(vms: int = 4, hosts: int = 2, tls: tuple[str, str] | None = None, page: int = 0,
          deny: str = "", deny_paths: tuple[str, ...] = (), disconnected: tuple[str, ...] = (),
          timeout: float = 900) -> Vcsim:
    """Start a VPX simulator on 127.0.0.1:<free port> with `vms` VMs in one cluster of `hosts`;
    `tls` = (certificate chain PEM file, key PEM file) serves https; `page` caps the objects per
    RetrievePropertiesEx page (maxObjects is always honoured, as vCenter does). `deny` refuses
    the properties of VMs whose name starts with it (renaming a VM grants or revokes), as vCenter
    does without System.Read: missingSet NoPermission entries, a NoPermission fault for pyVmomi's
    single reads; `deny_paths` restricts that to these properties. `disconnected`: names of VMs
    whose runtime.connectionState is disconnected (their host stopped answering vCenter), their
    powerState left as it was."""
    args = [str(build()), "-vm", str(vms), "-host", str(hosts), "-user", USER, "-pass", PASSWORD,
            "-page", str(page), "-deny", deny, "-deny-path", ",".join(deny_paths),
            "-disconnected", ",".join(disconnected)]
    if tls:
        args += ["-cert", tls[0], "-key", tls[1]]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    if not sel.select(timeout) or not (line := proc.stdout.readline()):
        proc.kill()
        raise RuntimeError(f"vcsim did not start (exit {proc.poll()})")
    info = json.loads(line)
    return Vcsim(proc, info["url"])


def connect(url: str) -> Any:
    """A separate pyvmomi session (the 'operator') used to prepare and change the inventory."""
    scheme, rest = url.split("://", 1)
    host, port = rest.split("/", 1)[0].rsplit(":", 1)
    return SmartConnect(protocol=scheme, host=host, port=int(port), user=USER, pwd=PASSWORD,
                        disableSslCertValidation=True)


def all_vms(si: Any) -> list[Any]:
    view = si.content.viewManager.CreateContainerView(si.content.rootFolder, [vim.VirtualMachine], True)
    try:
        return sorted(view.view, key=lambda vm: vm._moId)
    finally:
        view.DestroyView()


def wait(task: Any) -> Any:
    while task.info.state in ("queued", "running"):
        time.sleep(0.01)
    if task.info.state != "success":
        raise task.info.error
    return task.info.result


def tag(vm: Any, **keys: str) -> None:
    """Set guestinfo.tr7.<key> advanced settings (extraConfig) on a VM."""
    opts = [vim.option.OptionValue(key=f"guestinfo.tr7.{k}", value=v) for k, v in keys.items()]
    wait(vm.ReconfigVM_Task(vim.vm.ConfigSpec(extraConfig=opts)))


def rename(vm: Any, name: str) -> None:
    wait(vm.Rename_Task(name))


def disconnect(si: Any) -> None:
    Disconnect(si)


def DripProxy(upstream_url: str, pause: float = 0.05, trigger: bytes = b"RetrievePropertiesEx",
              hold: threading.Event | None = None) -> _dripproxy.DripProxy:
    """A proxy in front of vcsim that drips (or, with ``hold``, holds) the answers once a request
    naming ``trigger`` went through (tests/_dripproxy.py); ``proxy.url`` is vcsim's URL through it."""
    return _dripproxy.DripProxy.tcp(upstream_url, pause=pause, trigger=trigger, hold=hold)
