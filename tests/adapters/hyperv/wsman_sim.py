"""A WS-Management (WinRS) simulator over real TLS that "runs" the adapter's Hyper-V script."""

import base64
import json
import re
import socket
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from xml.sax.saxutils import escape

import spnego
from spnego.channel_bindings import GssChannelBindings

NS = {
    "s": "http://www.w3.org/2003/05/soap-envelope",
    "a": "http://schemas.xmlsoap.org/ws/2004/08/addressing",
    "w": "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd",
    "rsp": "http://schemas.microsoft.com/wbem/wsman/1/windows/shell",
}
SHELL = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell"
TRANSFER = "http://schemas.xmlsoap.org/ws/2004/09/transfer"
TIMEOUT_CODE = 2150858793  # WSMan "operation timed out": pywinrm asks again
CHUNK = 48 * 1024  # stdout bytes per Receive response, as a real listener splits big outputs


def clixml_error(message: str) -> bytes:
    lines = [f"Get-VM : {message}", "At line:4 char:7", "+ $vms=@(Get-VM)",
             "    + CategoryInfo          : PermissionDenied: (:) [Get-VM], VirtualizationException"]
    body = "".join(f'<S S="Error">{escape(ln)}_x000D__x000A_</S>' for ln in lines)
    return ('#< CLIXML\r\n<Objs Version="1.1.0.1" xmlns="http://schemas.microsoft.com/powershell/2004/04">'
            f"{body}</Objs>").encode()


PROGRESS = (b'#< CLIXML\r\n<Objs Version="1.1.0.1" xmlns="http://schemas.microsoft.com/powershell/2004/04">'
            b'<Obj S="progress" RefId="0"><TN RefId="0"><T>System.Management.Automation.PSCustomObject</T>'
            b'<T>System.Object</T></TN><MS><I64 N="SourceId">1</I64><PR N="Record"><AV>Preparing modules '
            b"for first use.</AV><AI>0</AI><Nil /><PI>-1</PI><PC>-1</PC><T>Completed</T><SR>-1</SR>"
            b"<SD> </SD></PR></MS></Obj></Objs>")


@dataclass
class WsmanState:
    username: str = "HV1\\tr7-meter"
    password: str = "Pa55w.rd"
    local_host: str = "HV1"
    cluster_nodes: list[str] = field(default_factory=lambda: ["HV1", "HV2"])
    down_nodes: set[str] = field(default_factory=set)
    vms: list[dict[str, Any]] = field(default_factory=list)  # Get-VM objects as the script selects them
    # failure injection
    output_json: str | None = None  # replaces the script's JSON (quirk shapes, malformed text)
    raw_stdout: bytes | None = None  # replaces stdout entirely
    exit_code: int = 0
    stderr: bytes = PROGRESS  # progress noise on success, as powershell.exe emits when modules load
    fault: tuple[int, str, str, int] | None = None  # (http status, subcode, reason, wsman code) at Create
    receive_timeouts: int = 0  # OperationTimeout faults before the output
    hang: bool = False  # the command never finishes
    hold: bool = False  # a hanging Receive waits the client's OperationTimeout out, as WinRM does
    # a listener (or a proxy before it) that drips its answers: seconds between the bytes of the body
    # of these actions' answers (Create, Command, Receive, Signal, Delete), until calm is set
    drip: float = 0.0
    drip_actions: set[str] = field(default_factory=set)
    calm: threading.Event = field(default_factory=threading.Event)
    auth: str = "basic"  # "basic", "negotiate" (NTLM inside Negotiate, as a domain listener), "credssp"
    channel_bindings: GssChannelBindings | None = None  # tls-server-end-point of the server certificate
    # what the client did
    scripts: list[str] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    open_shells: set[str] = field(default_factory=set)
    delegated: list[Any] = field(default_factory=list)  # CredSSP TSCredentials received
    commands: dict[str, dict[str, Any]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run_script(self, script: str) -> tuple[bytes, bytes, int]:
        """What powershell.exe would answer to the adapter's script, given the configured VMs."""
        if "Get-VM" not in script:
            return b"", clixml_error("The term is not recognized"), 1
        if self.exit_code:
            return b"", self.stderr, self.exit_code
        if self.raw_stdout is not None:
            return self.raw_stdout, self.stderr, 0
        if self.output_json is None:
            errors: list[str] = []
            if "Get-ClusterNode" in script:
                up = [n for n in self.cluster_nodes if n not in self.down_nodes]
                errors = [f"{n}: cluster node Down" for n in self.cluster_nodes if n in self.down_nodes]
                vms = [v for v in self.vms if v.get("ComputerName") in up]
            else:
                vms = [v for v in self.vms if v.get("ComputerName") == self.local_host]
            text = json.dumps({"vms": vms, "errors": errors}, separators=(",", ":"))
        else:
            text = self.output_json
        out = base64.b64encode(text.encode()) + b"\r\n" if text else b""
        return out, self.stderr, 0


def envelope(action: str, relates_to: str, body: str) -> bytes:
    return (f'<s:Envelope xml:lang="en-US" xmlns:s="{NS["s"]}" xmlns:a="{NS["a"]}" xmlns:x="{TRANSFER}" '
            f'xmlns:w="{NS["w"]}" xmlns:rsp="{SHELL}" xmlns:p="http://schemas.microsoft.com/wbem/wsman/1/wsman.xsd">'
            f"<s:Header><a:Action>{action}</a:Action><a:MessageID>uuid:{uuid.uuid4()}</a:MessageID>"
            f"<a:To>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</a:To>"
            f"<a:RelatesTo>{relates_to}</a:RelatesTo></s:Header><s:Body>{body}</s:Body></s:Envelope>").encode()


def fault(relates_to: str, subcode: str, reason: str, code: int) -> bytes:
    body = (f"<s:Fault><s:Code><s:Value>s:Receiver</s:Value>"
            f"<s:Subcode><s:Value>{subcode}</s:Value></s:Subcode>"
            f'</s:Code><s:Reason><s:Text xml:lang="en-US">{escape(reason)}</s:Text></s:Reason><s:Detail>'
            f'<f:WSManFault xmlns:f="http://schemas.microsoft.com/wbem/wsman/1/wsmanfault" Code="{code}" '
            f'Machine="hv1.example"><f:Message>{escape(reason)}</f:Message></f:WSManFault></s:Detail></s:Fault>')
    return envelope("http://schemas.dmtf.org/wbem/wsman/1/wsman/fault", relates_to, body)


def decode_command(command: str) -> str:
    m = re.search(r"(?i)-e(?:nc(?:odedcommand)?)?\s+([A-Za-z0-9+/=]+)\s*$", command)
    assert m, f"not an encoded PowerShell command: {command[:80]}"
    return base64.b64decode(m.group(1)).decode("utf-16-le")


class WsmanHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "Microsoft-HTTPAPI/2.0"
    state: WsmanState

    def setup(self) -> None:
        super().setup()
        # headers and body go out as two writes: without NODELAY, Nagle + delayed ACK add 40 ms
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/soap+xml;charset=UTF-8")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        st = self.state
        if not (st.drip and getattr(self, "action", "") in st.drip_actions):
            self.wfile.write(body)
            return
        for i in range(len(body)):  # a steady trickle: every read gets a byte within its timeout
            if st.calm.is_set():
                self.wfile.write(body[i:])
                return
            self.wfile.write(body[i:i + 1])
            self.wfile.flush()
            time.sleep(st.drip)

    def _authorised(self) -> bool:
        """Basic per request; NTLM per connection (this handler object lives as long as the connection)."""
        auth = self.headers.get("Authorization", "")
        if self.state.auth == "basic":
            if not auth.startswith("Basic "):
                return False
            user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            return (user, password) == (self.state.username, self.state.password)
        if getattr(self, "ntlm_done", False) and not auth:
            return True
        scheme, _, token = auth.partition(" ")
        if self.state.auth == "credssp":
            return self._credssp(scheme, token)
        if scheme.lower() != "negotiate" or not token:
            return False
        raw = base64.b64decode(token)
        if raw[8:9] == b"\x01":  # NEGOTIATE_MESSAGE: start a context, answer the challenge
            self.ntlm = spnego.server(protocol="ntlm", service="http",
                                      channel_bindings=self.state.channel_bindings)
            challenge = self.ntlm.step(raw) or b""
            self.challenge = "Negotiate " + base64.b64encode(challenge).decode()
            return False
        try:  # AUTHENTICATE_MESSAGE: verifies the NTLMv2 response (password from NTLM_USER_FILE) and CBT
            self.ntlm.step(raw)
        except Exception:
            return False
        self.ntlm_done = bool(self.ntlm.complete)
        return self.ntlm_done

    def _credssp(self, scheme: str, token: str) -> bool:
        """CredSSP [MS-CSSP]: TLS, then NTLM inside it, then the delegated password; per connection."""
        if scheme.lower() != "credssp" or not token:
            return False
        ctx = getattr(self, "credssp", None)
        if ctx is None or ctx.complete:
            ctx = self.credssp = spnego.server(protocol="credssp", service="HTTP")
        try:
            out = ctx.step(base64.b64decode(token))
        except Exception:
            self.credssp = None
            return False  # refused: 401 without a token, as Windows answers a bad password
        if ctx.complete:
            self.ntlm_done = True
            self.state.delegated.append(ctx.get_extra_info("client_credential"))
            return True
        self.challenge = "CredSSP " + base64.b64encode(out or b"").decode()
        return False

    def do_POST(self) -> None:
        data = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.action = ""  # this request's, once read (a 401 answer is never dripped)
        if self.path != "/wsman":
            return self._send(404, b"")
        self.challenge = ""
        if not self._authorised():
            offers = {"negotiate": "Negotiate", "credssp": "CredSSP", "basic": 'Basic realm="WSMAN"'}
            offer = self.challenge or offers[self.state.auth]
            return self._send(401, b"", {"WWW-Authenticate": offer})
        root = ET.fromstring(data)
        action = root.findtext("s:Header/a:Action", "", NS)
        msg_id = root.findtext("s:Header/a:MessageID", "", NS)
        shell_id = next((sel.text or "" for sel in root.iterfind("s:Header/w:SelectorSet/w:Selector", NS)
                         if sel.get("Name") == "ShellId"), "")
        body = root.find("s:Body", NS)
        assert body is not None
        st = self.state
        self.action = action.rsplit("/", 1)[-1]
        with st.lock:
            st.actions.append(self.action)
        if action == f"{TRANSFER}/Create":
            if st.fault:
                status, subcode, reason, code = st.fault
                return self._send(status, fault(msg_id, subcode, reason, code))
            new = str(uuid.uuid4()).upper()
            with st.lock:
                st.open_shells.add(new)
            return self._send(200, envelope(f"{TRANSFER}/CreateResponse", msg_id,
                                            f"<x:ResourceCreated><a:Address>https://hv1.example:5986/wsman</a:Address>"
                                            f"<a:ReferenceParameters><w:ResourceURI>{NS['w']}</w:ResourceURI>"
                                            f'<w:SelectorSet><w:Selector Name="ShellId">{new}</w:Selector>'
                                            f"</w:SelectorSet></a:ReferenceParameters></x:ResourceCreated>"
                                            f"<rsp:Shell><rsp:ShellId>{new}</rsp:ShellId></rsp:Shell>"))
        if shell_id not in st.open_shells:
            gone = fault(msg_id, "w:InvalidSelectors", "The shell was not found.", 2150858843)
            return self._send(500, gone)
        if action == f"{SHELL}/Command":
            command = body.findtext("rsp:CommandLine/rsp:Command", "", NS)
            script = decode_command(command)
            stdout, stderr, code = st.run_script(script)
            cid = str(uuid.uuid4()).upper()
            with st.lock:
                st.scripts.append(script)
                st.commands[cid] = {"stdout": stdout, "stderr": stderr, "code": code, "pos": 0,
                                    "timeouts": st.receive_timeouts, "signalled": False}
            return self._send(200, envelope(f"{SHELL}/CommandResponse", msg_id,
                                            f"<rsp:CommandResponse><rsp:CommandId>{cid}</rsp:CommandId>"
                                            "</rsp:CommandResponse>"))
        if action == f"{SHELL}/Receive":
            held = root.findtext("s:Header/w:OperationTimeout", "PT0.2S", NS)  # e.g. PT20.000S
            return self._receive(body, msg_id, float(held.removeprefix("PT").removesuffix("S")))
        if action == f"{SHELL}/Signal":
            sig = body.find("rsp:Signal", NS)
            with st.lock:
                st.commands[sig.get("CommandId", "") if sig is not None else ""]["signalled"] = True
            return self._send(200, envelope(f"{SHELL}/SignalResponse", msg_id, "<rsp:SignalResponse/>"))
        if action == f"{TRANSFER}/Delete":
            with st.lock:
                st.open_shells.discard(shell_id)
            return self._send(200, envelope(f"{TRANSFER}/DeleteResponse", msg_id, ""))
        self._send(500, fault(msg_id, "w:ActionNotSupported", f"unsupported action {action}", 2150858776))

    def _receive(self, body: ET.Element, msg_id: str, operation_timeout: float = 0.2) -> None:
        stream = body.find("rsp:Receive/rsp:DesiredStream", NS)
        cid = stream.get("CommandId", "") if stream is not None else ""
        cmd = self.state.commands[cid]
        if self.state.hang or cmd["timeouts"] > 0:
            cmd["timeouts"] -= 1
            # a long poll that ended without output
            time.sleep(operation_timeout if self.state.hold else 0.2)
            reason = "The WS-Management service cannot complete the operation within the time specified."
            return self._send(500, fault(msg_id, "w:TimedOut", reason, TIMEOUT_CODE))
        chunk = cmd["stdout"][cmd["pos"]:cmd["pos"] + CHUNK]
        cmd["pos"] += len(chunk)
        done = cmd["pos"] >= len(cmd["stdout"])
        data = base64.b64encode(chunk).decode()
        parts = [f'<rsp:Stream Name="stdout" CommandId="{cid}">{data}</rsp:Stream>']
        if done:
            parts += [f'<rsp:Stream Name="stdout" CommandId="{cid}" End="true"></rsp:Stream>']
            if cmd["stderr"]:
                parts.append(f'<rsp:Stream Name="stderr" CommandId="{cid}">'
                             f"{base64.b64encode(cmd['stderr']).decode()}</rsp:Stream>")
            parts.append(f'<rsp:Stream Name="stderr" CommandId="{cid}" End="true"></rsp:Stream>'
                         f'<rsp:CommandState CommandId="{cid}" State="{SHELL}/CommandState/Done">'
                         f"<rsp:ExitCode>{cmd['code']}</rsp:ExitCode></rsp:CommandState>")
        else:
            parts.append(f'<rsp:CommandState CommandId="{cid}" State="{SHELL}/CommandState/Running"/>')
        self._send(200, envelope(f"{SHELL}/ReceiveResponse", msg_id,
                                 f"<rsp:ReceiveResponse>{''.join(parts)}</rsp:ReceiveResponse>"))


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # TLS handshakes refused by the client and cut connections are expected in tests
