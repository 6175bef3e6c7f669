"""Ship spooled heartbeats to the collector (heartbeat-v1.md §4): batches in seq order, gzip,
keep-alive, backoff with jitter, Retry-After; delete only what has a durable answer."""

import contextlib
import email.utils
import gzip
import logging
import random
import threading
import time
from collections.abc import Callable

import httpx

from agent import diskreserve
from agent.collectorclock import CollectorClock
from agent.collectorlink import ca_bundle, read_token, redact, redirect_problem
from agent.config import AgentSettings
from agent.metrics import Metrics
from agent.spool import Spool
from agent.spooltypes import Row, SpoolError
from protocol.heartbeat import MAX_REQUEST_LINES

log = logging.getLogger("tr7.agent.shipper")
MAX_LINES = MAX_REQUEST_LINES  # heartbeat-v1.md §4
MAX_RETRY_AFTER = 3600.0
SETTLE_STEP = 32  # rows a transaction when the disk is low (_settle)
GROW_AFTER = 10  # full batches in a row that let a batch cut by a 408/413 double again
STATUSES = frozenset({"accepted", "duplicate", "rejected"})


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP-date, RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return min(max(0.0, when - (time.time() if now is None else now)), MAX_RETRY_AFTER)


def make_client(settings: AgentSettings, timeout: float = 30.0) -> httpx.Client:
    headers = {"User-Agent": "tr7-agent"}
    # checked: httpx's error for a bad value quoted the whole header; an empty file is no token
    if settings.token_file and (token := read_token(settings.token_file)):
        headers["Authorization"] = f"Bearer {token}"
    if settings.ca_file:
        # httpx's own errors named neither the key nor the file ("[Errno 2]", an OpenSSL reason)
        ca_bundle(settings.ca_file)
    verify: str | bool = settings.ca_file or True
    return httpx.Client(verify=verify, timeout=timeout, headers=headers)


class Shipper:
    def __init__(self, settings: AgentSettings, spool: Spool, metrics: Metrics | None = None,
                 client: httpx.Client | None = None, clock: CollectorClock | None = None) -> None:
        assert settings.collector, "a shipper needs a collector URL"
        self.collector = settings.collector
        self.state_dir = settings.state_dir
        self.url = settings.collector + "/v1/heartbeats"
        self.clock = clock or CollectorClock()
        self.spool = spool
        self.metrics = metrics
        self.client = client or make_client(settings)
        self.failures = 0
        # No point in backing off longer than a poll interval (capped at 5 min): the collector
        # coming back should drain the spool within about one interval.
        self.max_backoff = float(min(300, max(1, settings.interval)))
        self.base = min(1.0, self.max_backoff)
        # Lines a request may carry: halved on each 413 (a proxy in front of the collector may
        # take less than its 5,000 lines / 16 MiB), so that the spool still drains.
        self.batch_lines = MAX_LINES
        self.full_batches = 0  # successes in a row at batch_lines: a cut batch grows back (408: a slow link)

    def _backoff(self) -> float:
        self.failures += 1
        if self.metrics:
            self.metrics.ship_failures.inc()
        ceiling: float = min(self.max_backoff, self.base * 2 ** min(self.failures - 1, 16))
        # "Equal jitter": never hammer (at least half the step), yet agents spread out.
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    def _outcomes(self, rows: list[Row], resp: httpx.Response) -> list[tuple[Row, str, str | None]] | None:
        try:
            results = resp.json()["results"]
        except (ValueError, KeyError, TypeError):
            log.error("event=bad_response reason='200 without a results array'")
            return None
        if not isinstance(results, list) or len(results) != len(rows):
            log.error("event=bad_response reason='results do not match lines' lines=%d results=%s",
                      len(rows), len(results) if isinstance(results, list) else "?")
            return None
        out: list[tuple[Row, str, str | None]] = []
        for row, res in zip(rows, results, strict=True):
            status = res.get("status") if isinstance(res, dict) else None
            # An answer for another seq means the collector and we disagree on the lines: trust none.
            if status not in STATUSES or res.get("seq", row.seq) != row.seq:
                log.error("event=bad_response reason='unexpected result' seq=%d result=%r", row.seq, res)
                return None
            out.append((row, status, res.get("reason")))
        return out

    def ship_once(self) -> float | None:
        """One request. Returns None when the spool is empty, 0 to go on at once, else seconds to wait."""
        rows = self.spool.batch(self.batch_lines)
        if not rows:
            self.failures = 0
            return None
        body = gzip.compress("\n".join(r.token for r in rows).encode("ascii"), compresslevel=6)
        headers = {"Content-Type": "text/plain; charset=us-ascii", "Content-Encoding": "gzip"}
        try:
            resp = self.client.post(self.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            delay = self._backoff()
            log.warning("event=ship_failed reason=%r lines=%d retry_in=%.1f",
                        redact(str(exc)) or type(exc).__name__, len(rows), delay)
            return delay
        self.clock.saw(resp.headers.get("Date"))
        if resp.status_code == 200:
            outcomes = self._outcomes(rows, resp)
            if outcomes is None:
                return self._backoff()
            if not self._settle(outcomes):
                return self._backoff()
            self.failures = 0
            self._grow(len(rows))
            rejected = [(r.seq, reason) for r, status, reason in outcomes if status == "rejected"]
            for seq, reason in rejected:
                log.error("event=heartbeat_rejected seq=%d reason=%r", seq, reason)
            if self.metrics:
                self.metrics.shipped.inc(len(outcomes) - len(rejected))
                self.metrics.rejected.inc(len(rejected))
                # The spool gauges follow the shipping too, not only the next poll: after an
                # outage they showed the old depth for up to an interval while `status` said 0.
                stats = self.spool.stats()
                self.metrics.depth.set(stats["spool_depth"])
                self.metrics.oldest.set(stats["oldest_unshipped_age_s"] or 0)
            log.info("event=shipped lines=%d rejected=%d last_seq=%d", len(rows), len(rejected), rows[-1].seq)
            return 0.0
        detail = resp.text[:200].replace("\n", " ")
        moved = redirect_problem(resp, "/v1/heartbeats")
        if moved is not None:  # not followed, and no refusal: the configuration names an old address
            wait = self._backoff()
            log.error("event=ship_redirected status=%d reason=%r retry_in=%.1f", resp.status_code, moved,
                      wait)
            return wait
        # 408: the collector cut a body that came in too slowly (a slow link): a smaller batch may
        # make it, where resending the same one was cut at the same place for good
        if resp.status_code in (408, 413) and len(rows) > 1:
            self.batch_lines, self.full_batches = max(1, len(rows) // 2), 0
            log.warning("event=ship_too_large status=%d lines=%d next_lines=%d detail=%r", resp.status_code,
                        len(rows), self.batch_lines, detail)
            return 0.0
        if resp.status_code == 413:
            log.error("event=ship_too_large status=413 lines=1 seq=%d detail=%r hint='one heartbeat is "
                      "larger than the collector or a proxy in front of it accepts'", rows[0].seq, detail)
        # Retry-After may lengthen the backoff, never shorten it: a 0, or a date already past (our
        # clock ahead of the server's), made the agent resend at once, over and over.
        wait = self._backoff()
        server = retry_after(resp.headers.get("Retry-After"))
        if server is not None:
            wait = max(wait, server)
        log.warning("event=ship_refused status=%d detail=%r retry_in=%.1f", resp.status_code, detail, wait)
        return wait

    def _settle(self, outcomes: list[tuple[Row, str, str | None]]) -> bool:
        """Record the answers; False when the disk is too full to (sent again later: duplicates).
        Any other SpoolError propagates: the service stops loudly."""
        if not diskreserve.low(self.state_dir):
            try:
                self.spool.settle(outcomes)
                return True
            except SpoolError as exc:
                if not diskreserve.is_full(exc, self.state_dir):
                    raise
                diskreserve.release(self.state_dir)  # the reserve's room: SQLite needs some to delete
        # Low on space: SETTLE_STEP rows a transaction, the WAL cut after each, so that one step's
        # pages are all the room it takes (a whole batch's deletions took more than the reserve);
        # a step the disk refuses is halved, down to one row.
        i, step = 0, SETTLE_STEP
        try:
            while i < len(outcomes):
                try:
                    self.spool.settle(outcomes[i:i + step], reclaim=False)
                except SpoolError as exc:
                    if not diskreserve.is_full(exc, self.state_dir) or step == 1:
                        raise
                    step //= 2
                    # not for the refused step's frames (the next one writes over them): for the
                    # committed ones a reader held a checkpoint off for, whose room the next step needs
                    self.spool.checkpoint()
                    continue
                i += step
                self.spool.checkpoint()
        except SpoolError as exc:
            if not diskreserve.is_full(exc, self.state_dir):
                raise
            log.error("event=disk_full at=settle lines=%d action='shipped but not recorded: sent again later "
                      "(answered duplicate); free space on the file system of state_dir'", len(outcomes) - i)
            # what is resent is what waits: a whole batch (up to 16 MiB) each time was a waste
            self.batch_lines, self.full_batches = SETTLE_STEP, 0
            return False
        finally:
            self.spool.shrink()  # what was recorded is free again now, not after the next checkpoint
        return True

    def _grow(self, lines: int) -> None:
        """A batch cut by a 408 (a slow link) or a 413 stayed small for the agent's life. After
        GROW_AFTER full batches in a row it doubles: at a proxy's fixed limit that costs one 413
        in GROW_AFTER + 1 requests; a limit lifted or a link recovered is used again."""
        if self.batch_lines >= MAX_LINES or lines < self.batch_lines:
            return  # a batch not full says nothing about a larger one
        self.full_batches += 1
        if self.full_batches >= GROW_AFTER:
            self.batch_lines, self.full_batches = min(MAX_LINES, self.batch_lines * 2), 0
            log.info("event=ship_batch_grown next_lines=%d", self.batch_lines)

    def probe(self) -> None:
        """The collector's clock before the first poll signs anything (GET /healthz's Date)."""
        with contextlib.suppress(httpx.HTTPError):  # unreachable now: the first shipment's answer tells
            self.clock.saw(self.client.get(self.collector + "/healthz", timeout=10.0).headers.get("Date"))

    def run(self, stop: threading.Event, wake: threading.Event,
            on_fatal: Callable[[BaseException], None]) -> None:
        """Thread body: ship until the spool is empty, then sleep until woken by a new heartbeat."""
        try:
            self.probe()
            while not stop.is_set():
                delay = self.ship_once()
                if delay is None:
                    wake.wait()
                    wake.clear()
                elif delay > 0:
                    stop.wait(delay)
        except Exception as exc:
            on_fatal(exc)
        finally:
            self.client.close()
            self.spool.close()
