"""A small Azure Resource Manager + Entra ID token server over TLS, for tests and the benchmark.

It speaks the exact requests the unmodified SDKs make: msal's OpenID discovery and client-credentials
token call (secret or certificate assertion), App Service managed identity, and ARM's
`virtualMachines` lists (the model, or with statusOnly=true the statuses) with nextLink paging,
401, 403, 429 + Retry-After and 5xx.
"""

import json
import secrets
import ssl
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse

import trustme

LIST_PATH = "/providers/Microsoft.Compute/virtualMachines"


@dataclass
class Subscription:
    vms: list[dict[str, Any]] = field(default_factory=list)
    page_size: int = 1000
    fail_status: int | None = None  # answer every list call with this status
    throttle: int = 0  # answer the next N list calls 429 with Retry-After
    retry_after: int = 1  # the Retry-After of those answers, seconds
    delay: float = 0.0  # seconds before answering a list call (a slow or hung region of ARM)
    drip: float = 0.0  # seconds between the bytes of a list answer's body (each read gets a byte in time)


def vm(name: str, *, tags: dict[str, str] | None = None, power: str | None = "running",
       location: str = "westeurope", sub: str = "sub", vm_id: str | None = None) -> dict[str, Any]:
    """A VM as this server keeps it: the model and its instanceView statuses, of which a plain list
    answers the model and a statusOnly=true list only the id, name, type and statuses (ARM's
    statusOnly answer has no tags: a list call never gives both for a standalone VM)."""
    statuses = [{"code": "ProvisioningState/succeeded", "level": "Info",
                 "displayStatus": "Provisioning succeeded"}]
    if power is not None:
        statuses.append({"code": f"PowerState/{power}", "level": "Info", "displayStatus": f"VM {power}"})
    return {
        "id": f"/subscriptions/{sub}/resourceGroups/rg-tr7{LIST_PATH}/{name}",
        "name": name, "type": "Microsoft.Compute/virtualMachines", "location": location,
        "tags": tags or {},
        "properties": {"vmId": vm_id or str(uuid.uuid4()), "provisioningState": "Succeeded",
                       "hardwareProfile": {"vmSize": "Standard_D2s_v5"},
                       "instanceView": {"statuses": statuses}},
    }


class ArmServer:
    def __init__(self, workdir: Path) -> None:
        self.ca = trustme.CA()
        self.ca_file = workdir / "arm-ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.clients: dict[str, str] = {}  # client_id -> secret ("" = certificate assertion accepted)
        self.identity_header = secrets.token_hex(8)
        self.subscriptions: dict[str, Subscription] = {}
        self.tokens: set[str] = set()
        self.requests: list[tuple[str, str]] = []
        self.versions: list[tuple[str, str]] = []  # (path, api-version) of each GET
        self.lock = threading.Lock()
        self.calm = threading.Event()  # set: dripping answers send the rest at once
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ca.issue_cert("127.0.0.1").configure_cert(context)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def add_subscription(self, sub_id: str, **kw: Any) -> Subscription:
        self.subscriptions[sub_id] = Subscription(**kw)
        return self.subscriptions[sub_id]

    def add_vm(self, sub_id: str, name: str, **kw: Any) -> str:
        """Add a VM to a subscription; returns its vmId."""
        entry = vm(name, sub=sub_id, **kw)
        self.subscriptions[sub_id].vms.append(entry)
        return str(entry["properties"]["vmId"])

    def set_power(self, sub_id: str, vm_id: str, power: str) -> None:
        for entry in self.subscriptions[sub_id].vms:
            if entry["properties"]["vmId"] == vm_id:
                entry["properties"]["instanceView"]["statuses"][-1]["code"] = f"PowerState/{power}"

    def hide_power(self, sub_id: str, vm_id: str) -> None:
        """Make the list answer miss this VM's power state (as ARM rarely does); its own
        instanceView still has it."""
        for entry in self.subscriptions[sub_id].vms:
            if entry["properties"]["vmId"] == vm_id:
                view = entry["properties"]["instanceView"]
                entry["instanceView_full"] = {"statuses": list(view["statuses"])}
                view["statuses"] = view["statuses"][:1]

    def count(self, prefix: str) -> int:
        with self.lock:
            return sum(1 for _, path in self.requests if path.startswith(prefix))

    def issue_token(self) -> str:
        token = secrets.token_urlsafe(24)
        with self.lock:
            self.tokens.add(token)
        return token

    # -- request handling

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        arm = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: object) -> None:
                pass

            def _send(self, status: int, body: Any, headers: dict[str, str] | None = None,
                      drip: float = 0.0) -> None:
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(payload)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                if not drip:
                    self.wfile.write(payload)
                    return
                for i in range(len(payload)):
                    if arm.calm.is_set():  # the test is over: the rest at once
                        self.wfile.write(payload[i:])
                        return
                    self.wfile.write(payload[i:i + 1])
                    self.wfile.flush()
                    time.sleep(drip)

            def do_GET(self) -> None:
                url = urlparse(self.path)
                with arm.lock:
                    arm.requests.append(("GET", url.path))
                    arm.versions.append((url.path, parse_qs(url.query).get("api-version", [""])[0]))
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                parts = url.path.strip("/").split("/")
                if url.path.endswith("/v2.0/.well-known/openid-configuration"):
                    self._send(200, arm.openid(parts[0]))
                elif url.path == "/msi/token":
                    self._managed_identity(query)
                elif len(parts) == 5 and parts[0] == "subscriptions" and url.path.endswith(LIST_PATH):
                    self._list(parts[1], query)
                elif len(parts) == 9 and parts[0] == "subscriptions" and parts[-1] == "instanceView":
                    self._instance_view(parts[1], parts[3], parts[7])
                else:
                    self._send(404, {"error": {"code": "NotFound", "message": f"no route {url.path}"}})

            def do_POST(self) -> None:
                url = urlparse(self.path)
                with arm.lock:
                    arm.requests.append(("POST", url.path))
                form = {k: v[0] for k, v in parse_qs(
                    self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()).items()}
                if url.path.endswith("/oauth2/v2.0/token"):
                    self._token(form)
                else:
                    self._send(404, {"error": "not_found"})

            def _token(self, form: dict[str, str]) -> None:
                client = form.get("client_id", "")
                expected = arm.clients.get(client)
                assertion = form.get("client_assertion_type", "").endswith("jwt-bearer")
                secret_ok = expected != "" and form.get("client_secret") == expected
                good = form.get("grant_type") == "client_credentials" and expected is not None and (
                    (expected == "" and assertion) or secret_ok)
                if not good:
                    self._send(401, {"error": "invalid_client", "error_codes": [7000215],
                                     "error_description": "AADSTS7000215: Invalid client secret provided."})
                    return
                self._send(200, {"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599,
                                 "access_token": arm.issue_token()})

            def _managed_identity(self, query: dict[str, str]) -> None:
                if self.headers.get("X-IDENTITY-HEADER") != arm.identity_header or "resource" not in query:
                    self._send(400, {"error": "invalid_request", "error_description": "bad identity header"})
                    return
                self._send(200, {"access_token": arm.issue_token(), "token_type": "Bearer",
                                 "expires_on": str(int(time.time()) + 3600), "resource": query["resource"]})

            def _authorized(self) -> bool:
                token = self.headers.get("Authorization", "").removeprefix("Bearer ")
                if token not in arm.tokens:
                    self._send(401, {"error": {"code": "InvalidAuthenticationToken",
                                               "message": "The access token is invalid."}})
                return token in arm.tokens

            def _instance_view(self, sub_id: str, group: str, name: str) -> None:
                if not self._authorized():
                    return
                for entry in arm.subscriptions.get(sub_id, Subscription()).vms:
                    if entry["id"] == f"/subscriptions/{sub_id}/resourceGroups/{group}{LIST_PATH}/{name}":
                        self._send(200, entry.get("instanceView_full") or entry["properties"]["instanceView"])
                        return
                self._send(404, {"error": {"code": "ResourceNotFound", "message": f"{name} not found"}})

            def _list(self, sub_id: str, query: dict[str, str]) -> None:
                if not self._authorized():
                    return
                sub = arm.subscriptions.get(sub_id)
                if sub is None:
                    self._send(404, {"error": {"code": "SubscriptionNotFound", "message":
                                               f"The subscription '{sub_id}' could not be found."}})
                    return
                if sub.delay:
                    time.sleep(sub.delay)
                if sub.throttle > 0:
                    with arm.lock:
                        sub.throttle -= 1
                    self._send(429, {"error": {"code": "TooManyRequests", "message": "Rate limit reached"}},
                               {"Retry-After": str(sub.retry_after)})
                    return
                if sub.fail_status == 403:
                    self._send(403, {"error": {"code": "AuthorizationFailed", "message": (
                        "The client does not have authorization to perform action "
                        "'Microsoft.Compute/virtualMachines/read'")}})
                    return
                if sub.fail_status is not None:
                    self._send(sub.fail_status, {"error": {"code": "InternalServerError", "message": "boom"}})
                    return
                start = int(query.get("$skiptoken", "0"))
                items = [{k: v for k, v in e.items() if k != "instanceView_full"}
                         for e in sub.vms[start:start + sub.page_size]]
                if query.get("statusOnly") != "true":  # the model alone: no power state
                    items = [{**v, "properties": {k: p for k, p in v["properties"].items()
                                                  if k != "instanceView"}} for v in items]
                else:  # the statuses alone: no tags, no vmId, no location (nor any other model member)
                    items = [{"id": v["id"], "name": v["name"], "type": v["type"],
                              "properties": {"instanceView": v["properties"]["instanceView"]}} for v in items]
                body: dict[str, Any] = {"value": items}
                if start + sub.page_size < len(sub.vms):
                    next_query = {**query, "$skiptoken": str(start + sub.page_size)}
                    body["nextLink"] = f"{arm.url}/subscriptions/{sub_id}{LIST_PATH}?{urlencode(next_query)}"
                self._send(200, body, drip=sub.drip)

        return Handler

    def openid(self, tenant: str) -> dict[str, Any]:
        base = f"{self.url}/{tenant}"
        return {
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
            "issuer": f"{base}/v2.0",
            "jwks_uri": f"{base}/discovery/v2.0/keys",
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "tenant_region_scope": "EU",
        }
