"""A private libvirtd (Debian's libvirt-daemon) serving libvirt's test driver on a unix socket."""

import os
import signal
import socket
import subprocess
import time
from pathlib import Path


class Libvirtd:
    """libvirtd with its sockets in `root`; no hypervisor driver is loaded (LIBVIRT_DRIVER_DIR
    points at an empty directory), so clients reach the built-in test driver through the real
    remote protocol: `test+unix:///abs/node.xml?socket=<root>/libvirt-sock-ro`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "drivers").mkdir(parents=True, exist_ok=True)
        (root / "libvirtd.conf").write_text(
            f'unix_sock_dir = "{root}"\nauth_unix_ro = "none"\nauth_unix_rw = "none"\n'
            'listen_tcp = 0\nlisten_tls = 0\nlog_outputs = "1:stderr"\n')
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> Path:
        return self.root / "libvirt-sock-ro"

    def uri(self, node_xml: Path) -> str:
        return f"test+unix://{node_xml.resolve()}?socket={self.socket}"

    def start(self) -> "Libvirtd":
        self.socket.unlink(missing_ok=True)
        env = {**os.environ, "LIBVIRT_DRIVER_DIR": str(self.root / "drivers")}
        self.proc = subprocess.Popen(
            ["/usr/sbin/libvirtd", "--config", str(self.root / "libvirtd.conf"),
             "--pid-file", str(self.root / "libvirtd.pid")],
            env=env, stdout=subprocess.DEVNULL, stderr=open(self.root / "libvirtd.log", "ab"))  # noqa: SIM115
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"libvirtd exited: {(self.root / 'libvirtd.log').read_text()[-2000:]}")
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(str(self.socket))
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("libvirtd did not open its socket")

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGCONT)  # in case a test froze it
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.proc = None

    def freeze(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)
