"""Fixtures: a real moto server in its own process, reset between tests, and clients to seed it."""

import json
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.client import HTTPConnection
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest

DEFAULT_KEY = "AKIAIOSFODNN7EXAMPLE"  # moto maps unknown keys to its default account 123456789012
OTHER_ACCOUNT = "222222222222"


class MotoServer:
    def __init__(self) -> None:
        exe = Path(sys.executable).with_name("moto_server")
        # -p 0: the OS picks a free port, moto prints it; no race with other test runs
        self.proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", "0"], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.url = self._read_url()
        self._wait_ready()

    def _read_url(self) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            m = re.search(r"Running on (http://127\.0\.0\.1:\d+)", line)
            if m:
                # keep draining moto's request log so the pipe never fills up and blocks it
                threading.Thread(target=self.proc.stdout.read, daemon=True).start()
                return m.group(1)
        self.proc.kill()
        raise RuntimeError("moto_server did not start")

    def _wait_ready(self) -> None:
        for _ in range(100):
            try:
                urllib.request.urlopen(self.url + "/moto-api/", timeout=2).read()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("moto_server does not answer")

    def post(self, path: str, body: bytes = b"") -> None:
        urllib.request.urlopen(urllib.request.Request(self.url + path, data=body, method="POST",
                                                      headers={"Content-Type": "text/plain"}),
                               timeout=120).read()

    def data(self) -> dict[str, Any]:
        """moto's model instances (e.g. the STS sessions it handed out)."""
        with urllib.request.urlopen(self.url + "/moto-api/data.json", timeout=120) as answer:
            out: dict[str, Any] = json.loads(answer.read())
        return out

    def reset(self) -> None:
        self.post("/moto-api/reset")
        self.require_auth(False)

    def require_auth(self, on: bool) -> None:
        """moto checks signatures against its IAM users only once this is on."""
        self.post("/moto-api/reset-auth", b"0" if on else b"inf")

    def ec2(self, region: str, creds: dict[str, str] | None = None) -> Any:
        """A client that seeds moto (as the default account, or as the given credentials' account)."""
        kw: dict[str, Any] = {"aws_access_key_id": DEFAULT_KEY, "aws_secret_access_key": "test-secret"}
        if creds:
            kw = {"aws_access_key_id": creds["AccessKeyId"],
                  "aws_secret_access_key": creds["SecretAccessKey"],
                  "aws_session_token": creds["SessionToken"]}
        return boto3.client("ec2", region_name=region, endpoint_url=self.url, **kw)

    def assume(self, role_arn: str) -> dict[str, str]:
        sts = boto3.client("sts", region_name="us-east-1", endpoint_url=self.url,
                           aws_access_key_id=DEFAULT_KEY, aws_secret_access_key="test-secret")
        creds: dict[str, str] = sts.assume_role(RoleArn=role_arn, RoleSessionName="seed")["Credentials"]
        return creds

    @staticmethod
    def launch(client: Any, count: int = 1, tags: dict[str, str] | None = None) -> list[str]:
        extra: dict[str, Any] = {}
        if tags:
            extra["TagSpecifications"] = [
                {"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}]
        answer = client.run_instances(ImageId="ami-12c6146b", MinCount=count, MaxCount=count,
                                      InstanceType="t3.small", **extra)
        return [i["InstanceId"] for i in answer["Instances"]]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="session")
def moto_session() -> Iterator[MotoServer]:
    server = MotoServer()
    yield server
    server.stop()


@pytest.fixture
def moto(moto_session: MotoServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> MotoServer:
    """A clean moto and an environment where the standard chain finds only the test's keys."""
    moto_session.reset()
    for var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_ROLE_ARN",
                "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_EC2", "HTTPS_PROXY",
                "HTTP_PROXY", "https_proxy", "http_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", DEFAULT_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    return moto_session




@pytest.fixture
def closed_port() -> int:
    """A port nothing listens on: bound then released, so a connect is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


THROTTLED = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>RequestLimitExceeded'
             b'</Code><Message>Request limit exceeded.</Message></Error></Errors>'
             b'<RequestID>throttle-proxy</RequestID></Response>')


REGION_DISABLED = (
    b'<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type>'
    b"<Code>RegionDisabledException</Code><Message>STS is not activated in this region for account:"
    b"123456789012. Your account administrator can activate STS in this region using the IAM Console."
    b"</Message></Error><RequestId>r</RequestId></ErrorResponse>"
)
AUTH_FAILURE = (
    b'<?xml version="1.0" encoding="UTF-8"?><Response><Errors><Error><Code>AuthFailure</Code><Message>'
    b"AWS was not able to validate the provided access credentials</Message></Error></Errors>"
    b"<RequestID>r</RequestID></Response>"
)


class ThrottleProxy:
    """An HTTP proxy in front of moto that answers RequestLimitExceeded for the regions in `throttle`
    (read from the SigV4 credential scope), as EC2 does to a caller over its request rate."""

    def __init__(self, upstream: str) -> None:
        self.throttle: set[str] = set()
        self.disabled: set[str] = set()  # opt-in regions not enabled: STS and EC2 refuse there
        self.throttled_requests = 0
        host, port = upstream.removeprefix("http://").split(":")
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                auth = self.headers.get("Authorization", "")
                scope = re.search(r"Credential=[^/]+/\d{8}/([^/]+)/([^/]+)/", auth)
                if scope and scope.group(1) in proxy.disabled:
                    if scope.group(2) == "sts":
                        self._answer(403, REGION_DISABLED, "text/xml")
                    else:
                        self._answer(401, AUTH_FAILURE, "text/xml")
                    return
                if scope and scope.group(1) in proxy.throttle:
                    proxy.throttled_requests += 1
                    self._answer(503, THROTTLED, "text/xml")
                    return
                conn = HTTPConnection(host, int(port), timeout=30)
                conn.request("POST", self.path, body, {k: v for k, v in self.headers.items()})
                answer = conn.getresponse()
                self._answer(answer.status, answer.read(), answer.getheader("Content-Type", "text/xml"))
                conn.close()

            def _answer(self, status: int, payload: bytes, ctype: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True  # a client still retrying must not hold up teardown
        self.server.block_on_close = False
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def throttle_proxy(moto: MotoServer) -> Iterator[ThrottleProxy]:
    proxy = ThrottleProxy(moto.url)
    yield proxy
    proxy.close()
