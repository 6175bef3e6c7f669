"""A small collector for the agent's tests: enrolment and the ingest contract of heartbeat-v1.md §4.

Run as its own process: `python mini_collector.py --db F --port-file F [--port N] [--token T ...]`.
Accepted lines are committed (SQLite WAL, synchronous=FULL) before the answer is sent, so a
kill -9 never loses an acknowledged heartbeat.
"""

import argparse
import base64
import email.utils
import gzip
import json
import random
import socket
import sqlite3
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from protocol.errors import ProtocolError
from protocol.heartbeat import check_key_window, verify_heartbeat
from protocol.keys import kid_of, load_public_key_b64

SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (token TEXT PRIMARY KEY, kid TEXT);
CREATE TABLE IF NOT EXISTS agents (kid TEXT PRIMARY KEY, public_key TEXT, name TEXT, enrolled_at INTEGER);
CREATE TABLE IF NOT EXISTS heartbeats (digest TEXT PRIMARY KEY, kid TEXT, seq INTEGER, prev TEXT,
                                       time INTEGER, token TEXT);
CREATE TABLE IF NOT EXISTS received (digest TEXT, status TEXT);
CREATE TABLE IF NOT EXISTS requests (n INTEGER);
"""


class State:
    def __init__(self, args: argparse.Namespace) -> None:
        self.db = sqlite3.connect(args.db, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)
        for t in args.token:
            self.db.execute("INSERT OR IGNORE INTO tokens (token, kid) VALUES (?, NULL)", (t,))
        self.lock = threading.Lock()
        self.reject_seqs = set(args.reject_seq)
        self.fail_first = args.fail_first
        self.retry_after = args.retry_after
        self.lose_answers = args.lose_answers
        self.max_lines = args.max_lines
        self.clock_offset = args.clock_offset  # this collector's clock: real time + offset

    def enroll(self, body: dict) -> tuple[int, dict]:
        try:
            key = load_public_key_b64(body["public_key"])
            kid = kid_of(base64.b64decode(body["public_key"]))
        except (KeyError, ProtocolError, TypeError) as exc:
            return 400, {"detail": f"bad request: {exc}"}
        del key
        with self.lock:
            row = self.db.execute("SELECT kid FROM tokens WHERE token = ?", (body.get("token"),)).fetchone()
            if row is None:
                return 403, {"detail": "unknown or expired enrolment token"}
            if row[0] is not None and row[0] != kid:
                return 409, {"detail": "enrolment token already used by another key"}
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("UPDATE tokens SET kid = ? WHERE token = ?", (kid, body["token"]))
            self.db.execute("INSERT OR IGNORE INTO agents VALUES (?,?,?,?)",
                            (kid, body["public_key"], body.get("name"), int(time.time())))
            self.db.execute("COMMIT")
            at = self.db.execute("SELECT enrolled_at FROM agents WHERE kid = ?", (kid,)).fetchone()[0]
        return 200, {"kid": kid, "provider": "test-provider",
                     "enrolled_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))}

    def ingest(self, lines: list[str]) -> tuple[int, dict, dict]:
        with self.lock:
            n = self.db.execute("SELECT count(*) FROM requests").fetchone()[0]
            self.db.execute("INSERT INTO requests VALUES (?)", (n + 1,))
            if n < self.fail_first:
                return 503, {"detail": "busy"}, {"Retry-After": str(self.retry_after)}
            if self.max_lines and len(lines) > self.max_lines:  # as a proxy with a smaller limit
                return 413, {"detail": "request entity too large"}, {}
            agents = {k: (load_public_key_b64(p), at) for k, p, at in
                      self.db.execute("SELECT kid, public_key, enrolled_at FROM agents")}
            results = []
            self.db.execute("BEGIN IMMEDIATE")
            for line in lines:
                try:
                    hb = verify_heartbeat(line, lambda kid: agents[kid][0] if kid in agents else None)
                    check_key_window(hb, agents[hb.kid][1], None)
                    if hb.time > time.time() + self.clock_offset + 300:
                        raise ProtocolError("time.future", "more than 300 s ahead")
                    if hb.seq in self.reject_seqs:
                        raise ProtocolError("test.reject", f"seq {hb.seq} rejected by the test")
                except ProtocolError as exc:
                    results.append({"seq": _seq_of(line), "status": "rejected", "reason": str(exc)})
                    self.db.execute("INSERT INTO received VALUES (?, 'rejected')", (line[-16:],))
                    continue
                cur = self.db.execute("INSERT OR IGNORE INTO heartbeats VALUES (?,?,?,?,?,?)",
                                      (hb.digest, hb.kid, hb.seq, hb.prev, hb.time, line))
                status = "accepted" if cur.rowcount == 1 else "duplicate"
                self.db.execute("INSERT INTO received VALUES (?, ?)", (hb.digest, status))
                results.append({"seq": hb.seq, "status": status})
            self.db.execute("COMMIT")
        return 200, {"results": results}, {}


def _seq_of(line: str) -> int | None:
    try:
        payload = line.split(".")[1]
        return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["seq"]
    except Exception:
        return None


def make_handler(state: State) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the agent's client expects

        def log_message(self, *args: object) -> None:
            pass

        def date_time_string(self, timestamp: float | None = None) -> str:  # the Date header
            return email.utils.formatdate(time.time() + state.clock_offset, usegmt=True)

        def _send(self, code: int, body: dict, headers: dict | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/healthz":
                self._send(200, {"status": "ok"})
            else:
                self._send(404, {"detail": "not found"})

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.path == "/v1/agents/enroll":
                self._send(*state.enroll(json.loads(raw)))
            elif self.path == "/v1/heartbeats":
                if self.headers.get("Content-Encoding") == "gzip":
                    raw = gzip.decompress(raw)
                lines = [ln for ln in raw.decode("ascii").split("\n") if ln]
                answer = state.ingest(lines)
                if answer[0] == 200 and random.random() < state.lose_answers:
                    # As if the collector died after committing: the agent must resend, and hear
                    # `duplicate` for what was already accepted.
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self._send(*answer)
            else:
                self._send(404, {"detail": "not found"})

    return Handler


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--db", required=True)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--port-file", required=True)
    p.add_argument("--token", action="append", default=[])
    p.add_argument("--reject-seq", type=int, action="append", default=[])
    p.add_argument("--fail-first", type=int, default=0,
                   help="answer 503 + Retry-After to the first N ingests")
    p.add_argument("--retry-after", type=int, default=1)
    p.add_argument("--max-lines", type=int, default=0, help="answer 413 to a request of more lines")
    p.add_argument("--clock-offset", type=float, default=0.0,
                   help="seconds this collector's clock is ahead of the real one (negative: behind)")
    p.add_argument("--lose-answers", type=float, default=0.0,
                   help="probability of committing an ingest and then dropping the connection unanswered")
    args = p.parse_args()
    ThreadingHTTPServer.allow_reuse_address = True
    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(State(args)))
    tmp = Path(args.port_file + ".tmp")
    tmp.write_text(str(server.server_address[1]))
    tmp.replace(args.port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
