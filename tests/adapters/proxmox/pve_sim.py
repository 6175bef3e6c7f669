"""A Proxmox VE API simulator over real TLS: the endpoints and payload shapes the adapter reads."""

import json
import secrets
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

API = "/api2/json"


@dataclass
class SimVM:
    node: str
    vmid: int
    name: str
    status: str = "running"  # cluster/resources status: running, stopped, unknown
    qmpstatus: str | None = None  # status/current qmpstatus; defaults to status
    description: str | None = None
    type: str = "qemu"  # qemu or lxc
    template: bool = False
    lock: str | None = None
    vmstate: str | None = None  # set on hibernated VMs
    current: str | None = None  # status/current's status when it differs: cluster/resources lags

    def resource(self) -> dict[str, Any]:
        running = self.status == "running"
        out: dict[str, Any] = {
            "id": f"{self.type}/{self.vmid}", "type": self.type, "vmid": self.vmid, "name": self.name,
            "node": self.node, "status": self.status, "template": int(self.template),
            "maxcpu": 4, "cpu": 0.031 if running else 0, "maxmem": 8589934592,
            "mem": 2147483648 if running else 0, "maxdisk": 34359738368, "disk": 0,
            "uptime": 86400 if running else 0, "netin": 123456, "netout": 654321,
            "diskread": 1048576, "diskwrite": 2097152,
        }
        if self.lock:
            out["lock"] = self.lock
        return out

    def config(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name, "memory": "8192", "cores": 4, "sockets": 1, "ostype": "l26",
            "scsi0": f"local-lvm:vm-{self.vmid}-disk-0,size=32G", "scsihw": "virtio-scsi-single",
            "net0": "virtio=BC:24:11:00:00:01,bridge=vmbr0,firewall=1", "boot": "order=scsi0",
            "smbios1": f"uuid={uuid.uuid5(uuid.NAMESPACE_URL, self.name)}",
            "vmgenid": str(uuid.uuid5(uuid.NAMESPACE_DNS, self.name)), "digest": secrets.token_hex(20),
        }
        if self.description is not None:
            out["description"] = self.description
        if self.template:
            out["template"] = 1
        if self.vmstate:
            out["vmstate"] = self.vmstate
        return out


@dataclass
class PveState:
    token: str = "tr7@pve!metering=6f1c2a9e-0d3b-4a57-9a51-3e2f8b7c1d00"  # USER@REALM!ID=SECRET
    users: dict[str, str] = field(default_factory=lambda: {"tr7@pve": "s3cret"})
    vms: list[SimVM] = field(default_factory=list)
    tickets: set[str] = field(default_factory=set)
    # failure injection
    node_errors: dict[str, tuple[int, str]] = field(default_factory=dict)  # node -> (status, reason)
    resources_status: int | None = None
    resources_body: bytes | None = None  # raw body instead of the JSON list (malformed JSON)
    resources_delay: float = 0.0
    resources_drip: float = 0.0  # seconds between the bytes of cluster/resources' body
    node_delay: dict[str, float] = field(default_factory=dict)
    node_drip: dict[str, float] = field(default_factory=dict)  # node -> seconds between its answers' bytes
    latency: float = 0.0  # seconds added to every per-VM call, as a real pveproxy round trip (bench)
    status_errors: set[str] = field(default_factory=set)  # "node/vmid" whose status/current fails
    requests: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    calm: threading.Event = field(default_factory=threading.Event)  # set: drips send the rest at once

    def find(self, node: str, vmid: str) -> SimVM | None:
        for vm in self.vms:
            if vm.node == node and str(vm.vmid) == vmid and vm.type == "qemu":
                return vm
        return None


class PveHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as pveproxy
    server_version = "pve-api-daemon/3.0"
    state: PveState

    def setup(self) -> None:
        super().setup()
        # headers and body go out as two writes: without NODELAY, Nagle + delayed ACK add 40 ms
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, payload: Any = None, reason: str | None = None, raw: bytes | None = None,
              cookie: str | None = None, drip: float = 0.0) -> None:
        body = raw if raw is not None else json.dumps({"data": payload}).encode()
        self.send_response(status, reason)
        self.send_header("Content-Type", "application/json;charset=UTF-8")
        self.send_header("Content-Length", str(len(body)))
        if cookie:
            self.send_header("Set-Cookie", cookie)
        self.end_headers()
        if not drip:
            self.wfile.write(body)
            return
        for i in range(len(body)):  # a steady trickle: every read gets a byte within its timeout
            if self.state.calm.is_set():
                self.wfile.write(body[i:])
                return
            self.wfile.write(body[i:i + 1])
            self.wfile.flush()
            time.sleep(drip)

    def _authorised(self) -> bool:
        auth = self.headers.get("Authorization", "")
        if auth.startswith("PVEAPIToken="):
            return auth[len("PVEAPIToken="):] == self.state.token
        for part in self.headers.get("Cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == "PVEAuthCookie" and value in self.state.tickets:
                return True
        return False

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        self.state.requests.append(("POST", path))
        length = int(self.headers.get("Content-Length", "0"))
        form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
        if path != f"{API}/access/ticket":
            return self._send(501, None, "Method 'POST " + path + "' not implemented")
        user, password = form.get("username", ""), form.get("password", "")
        if self.state.users.get(user) != password:
            return self._send(401, None, "authentication failure")
        ticket = f"PVE:{user}:{int(time.time()):08X}::{secrets.token_urlsafe(48)}"
        with self.state.lock:
            self.state.tickets.add(ticket)
        csrf = f"{int(time.time()):08X}:{secrets.token_urlsafe(32)}"
        self._send(200, {"ticket": ticket, "CSRFPreventionToken": csrf, "username": user,
                         "cap": {"vms": {"VM.Audit": 1}}})

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        path, query = parts.path, parse_qs(parts.query)
        self.state.requests.append(("GET", path))
        if not path.startswith(API + "/"):
            return self._send(404, None, "Not Found")
        if not self._authorised():
            return self._send(401, None, "No ticket")
        seg = path[len(API) + 1:].split("/")
        if seg == ["cluster", "resources"]:
            return self._resources(query.get("type", [None])[0])
        if len(seg) >= 5 and seg[0] == "nodes" and seg[2] == "qemu":
            return self._qemu(seg[1], seg[3], "/".join(seg[4:]))
        self._send(501, None, f"Method 'GET /{'/'.join(seg)}' not implemented")

    def _resources(self, kind: str | None) -> None:
        st = self.state
        if st.resources_delay:
            time.sleep(st.resources_delay)
        if st.resources_status:
            return self._send(st.resources_status, None, "Internal Server Error")
        if st.resources_body is not None:
            return self._send(200, raw=st.resources_body)
        items = [vm.resource() for vm in st.vms]
        if kind == "vm":
            items = [i for i in items if i["type"] in ("qemu", "lxc")]
        items += [] if kind == "vm" else [{"id": f"node/{n}", "type": "node", "node": n, "status": "online"}
                                          for n in sorted({vm.node for vm in st.vms})]
        self._send(200, items, drip=st.resources_drip)

    def _qemu(self, node: str, vmid: str, rest: str) -> None:
        st = self.state
        if node in st.node_delay or st.latency:
            time.sleep(st.node_delay.get(node, 0.0) + st.latency)
        if node in st.node_errors:
            status, reason = st.node_errors[node]
            return self._send(status, None, reason)
        vm = st.find(node, vmid)
        if vm is None:
            return self._send(500, None, f"Configuration file 'nodes/{node}/qemu-server/{vmid}.conf' "
                                         "does not exist")
        drip = st.node_drip.get(node, 0.0)
        if rest == "config":
            return self._send(200, vm.config(), drip=drip)
        if rest == "status/current":
            if f"{node}/{vmid}" in st.status_errors:
                return self._send(500, None, "VM is locked (migrate)")
            if vm.current is not None:  # qemu-server: a VM not running has no qmpstatus
                return self._send(200, {"vmid": vm.vmid, "name": vm.name, "status": vm.current,
                                        "cpus": 4, "maxmem": 8589934592, "ha": {"managed": 0}})
            qmp = vm.qmpstatus or vm.status
            return self._send(200, {"vmid": vm.vmid, "name": vm.name, "status": vm.status, "qmpstatus": qmp,
                                    "cpus": 4, "maxmem": 8589934592, "uptime": 86400, "ha": {"managed": 0}})
        self._send(501, None, f"Method 'GET {rest}' not implemented")


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # TLS handshakes refused by the client and cut connections are expected in tests
