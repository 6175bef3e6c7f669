"""A private libvirtd (Debian's libvirt-daemon) serving libvirt's test driver on a unix socket or TCP."""

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests import _dripproxy


class Libvirtd:
    """libvirtd with its sockets in `root`; no hypervisor driver is loaded (LIBVIRT_DRIVER_DIR
    points at an empty directory), so clients reach the built-in test driver through the real
    remote protocol: `test+unix:///abs/node.xml?socket=<root>/libvirt-sock-ro`.

    With `sasl_users` ({name: password}) it also listens on 127.0.0.1 TCP with `auth_tcp = "sasl"`:
    DIGEST-MD5 against a sasldb in `root` (libvirt refuses a SASL mechanism without a security layer
    on plain TCP, which rules out SCRAM and PLAIN), its own sasl2 config through SASL_CONF_PATH."""

    def __init__(self, root: Path, sasl_users: dict[str, str] | None = None) -> None:
        self.root = root
        (root / "drivers").mkdir(parents=True, exist_ok=True)
        conf = (f'unix_sock_dir = "{root}"\nauth_unix_ro = "none"\nauth_unix_rw = "none"\n'
                'listen_tls = 0\nlog_outputs = "1:stderr"\n')
        self.env = {**os.environ, "LIBVIRT_DRIVER_DIR": str(root / "drivers")}
        self.port: int | None = None
        if sasl_users is None:
            conf += "listen_tcp = 0\n"
        else:
            self.port = _free_port()
            conf += (f'listen_tcp = 1\nlisten_addr = "127.0.0.1"\ntcp_port = "{self.port}"\n'
                     'auth_tcp = "sasl"\n')
            self._sasldb(sasl_users)
        (root / "libvirtd.conf").write_text(conf)
        self.proc: subprocess.Popen[bytes] | None = None

    def _sasldb(self, users: dict[str, str]) -> None:
        # libvirtd's SASL application name is "libvirt": it reads <SASL_CONF_PATH>/libvirt.conf
        (self.root / "sasl2").mkdir(exist_ok=True)
        db = self.root / "passwd.db"
        (self.root / "sasl2" / "libvirt.conf").write_text(f"mech_list: digest-md5\nsasldb_path: {db}\n")
        self.env["SASL_CONF_PATH"] = str(self.root / "sasl2")
        for user, password in users.items():
            subprocess.run(["saslpasswd2", "-c", "-p", "-a", "libvirt", "-f", str(db), user],
                           input=password.encode(), env=self.env, check=True, capture_output=True)

    @property
    def socket(self) -> Path:
        return self.root / "libvirt-sock-ro"

    def uri(self, node_xml: Path) -> str:
        return f"test+unix://{node_xml.resolve()}?socket={self.socket}"

    def tcp_uri(self, node_xml: Path) -> str:
        assert self.port is not None, "started without sasl_users: no TCP listener"
        return f"test+tcp://127.0.0.1:{self.port}{node_xml.resolve()}"

    def start(self) -> "Libvirtd":
        self.socket.unlink(missing_ok=True)
        listen = [] if self.port is None else ["--listen"]  # listen_tcp is ignored without it
        self.proc = subprocess.Popen(
            ["/usr/sbin/libvirtd", *listen, "--config", str(self.root / "libvirtd.conf"),
             "--pid-file", str(self.root / "libvirtd.pid")],
            env=self.env, stdout=subprocess.DEVNULL, stderr=open(self.root / "libvirtd.log", "ab"))  # noqa: SIM115
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"libvirtd exited: {(self.root / 'libvirtd.log').read_text()[-2000:]}")
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(str(self.socket))
                if self.port is not None:
                    socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()  # do not leave it running behind a failed fixture
        raise RuntimeError("libvirtd did not open its socket(s)")

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def DripProxy(upstream: Path, path: Path, pause: float = 0.01) -> _dripproxy.DripProxy:
    """A unix-socket proxy in front of libvirtd's socket that, while its ``calm`` is clear, sends the
    daemon's answers a byte every ``pause`` seconds: a daemon (or an ssh/TLS path) answering slowly
    but steadily, its keepalive answers included (each arrives well within the keepalive interval).
    Made calm (answers whole); clear ``calm`` to drip (tests/_dripproxy.py)."""
    proxy = _dripproxy.DripProxy.unix(upstream, path, pause=pause)
    proxy.calm.set()
    return proxy
