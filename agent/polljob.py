"""The scheduled poll: a slot polled, signed into the spool and counted (the Service's half that signs)."""

import json
import logging
import threading
import time

from agent import diskreserve, signedkeys
from agent.collectorclock import AHEAD_LIMIT, CollectorClock
from agent.poller import Poller
from agent.slotevents import SlotEvents, back_limit
from agent.spooltypes import ClockBehind, SpoolError
from protocol.errors import ProtocolError
from protocol.keys import AgentKey
from protocol.timefmt import format_time

log = logging.getLogger("tr7.agent")


class PollJob(SlotEvents):
    """Mixed into agent.service.Service, whose attributes these are; what keeps a slot from being
    signed is SlotEvents'."""

    key: AgentKey
    poller: Poller
    lock: threading.Lock
    wake: threading.Event
    collector_clock: CollectorClock
    enrolled_at: int | None
    last_activity: float

    def _die(self, exc: BaseException) -> None:
        raise NotImplementedError  # Service's own: the main loop stops on it

    def poll_job(self) -> None:
        self.last_activity = time.monotonic()
        with self.lock:
            poller, interval = self.poller, self.config.agent.interval
        when = int(time.time()) // interval * interval
        try:
            back, self.clock_back = self.clock_back, 0.0
            if back:  # recorded here, on the spool's own thread (see watch_clock)
                self.spool.record_event("clock_backwards", json.dumps(
                    {"now": format_time(int(time.time())), "back_seconds": round(back)}))
            ahead = self.collector_clock.ahead()
            if ahead is not None and ahead > AHEAD_LIMIT:
                self._ahead_event(when, ahead)
                return
            if self.enrolled_at is not None and when < self.enrolled_at:
                self._before_enrolment_event(when, self.enrolled_at)
                return
            # Signed only with the reserve whole (or none to be had on this file system): the room
            # it gave back is the shipper's, to record what it ships, whoever gave it back (this
            # poll, the shipper, a start); a heartbeat signed into it left the spool unable to
            # delete a shipped row again.
            if diskreserve.ensure(self.config.agent.state_dir) is False:
                self._disk_low(when)
                return
            if self.disk_full:
                self.disk_full = False
                self.metrics.disk_full.set(0)
                log.warning("event=disk_ok poll=%s action='signing again'", format_time(when))
            head = self.spool.head(self.key.kid)
            back = head.time is not None and when <= head.time
            # A large step back is signed as it is only when the collector's clock says ours is
            # right now, so the last heartbeat was signed while it was far ahead: §3 rule 5 makes
            # it an alert, where waiting silenced the agent until that time. A small one, or one
            # no collector confirms (our clock may be the one gone back: an RTC reset would sign
            # past hours with today's instances, billed), skips the slot as before.
            confirmed = ahead is not None and abs(ahead) <= AHEAD_LIMIT
            if back and head.time is not None and (head.time - when < back_limit(interval) or not confirmed):
                self._clock_event(when, head.time, "skip")
                return
            try:
                outcome = poller.poll_all()
            except RuntimeError:
                # A reload closed this poller (its thread pool) while the slot began: poll with
                # the new one; it killed the agent and lost the slot's heartbeat.
                with self.lock:
                    if self.poller is poller:
                        raise
                    poller = self.poller
                outcome = poller.poll_all()
            for a in outcome.adapters:
                self.metrics.polls.labels(a.name).inc()
                self.metrics.poll_seconds.labels(a.name).observe(a.seconds)
                self.metrics.instances.labels(a.name).set(len(a.observations))
                failures = self.metrics.poll_failures.labels(a.name)  # at 0 from the first poll on:
                if not a.ok:  # a rate() or an alert over it has a series before the first failure
                    failures.inc()
            try:
                try:
                    seq, _ = self.spool.append(self.key, when, interval, outcome.polls, outcome.observations,
                                               back=back)
                except (ProtocolError, UnicodeError) as exc:
                    # Something the poller's checks let through and signing refuses: the slot is
                    # signed with every adapter failed, rather than the agent stopping for good
                    log.error("event=heartbeat_refused reason=%r action='signed with no observation'", exc)
                    why = "observations refused at signing (see the agent's log)"
                    failed = [{**p, "ok": False, "error": why} for p in outcome.polls]
                    seq, _ = self.spool.append(self.key, when, interval, failed, [], back=back)
            except ClockBehind as exc:
                self._clock_event(exc.when, exc.last, "skip")
                return
            except SpoolError as exc:
                if not diskreserve.is_full(exc, self.config.agent.state_dir):
                    raise
                self._disk_full(when, exc)
                return
            if back and head.time is not None:
                self._clock_event(when, head.time, "signed")
            if seq == 1:
                try:
                    signedkeys.add(self.config.agent.state_dir, self.key.kid)
                except OSError as exc:  # listed again at the next start (signedkeys.check)
                    if not diskreserve.is_full(exc):
                        raise
                    log.warning("event=disk_full at=signed_keys action='listed at the next start'")
            self.metrics.signed.inc()
            self.metrics.last_poll.set(when)
            self.wake.set()
            log.info("event=heartbeat seq=%d time=%s observations=%d failed=%d", seq, format_time(when),
                     len(outcome.observations), sum(1 for a in outcome.adapters if not a.ok))
            self._gauges()
            self.last_activity = time.monotonic()
        except Exception as exc:  # a spool that cannot commit (disk full, I/O error) is fatal
            self._die(exc)

    def _gauges(self) -> None:
        stats = self.spool.stats()
        self.metrics.depth.set(stats["spool_depth"])
        self.metrics.oldest.set(stats["oldest_unshipped_age_s"] or 0)
        self.metrics.spool_bytes.set(stats["spool_bytes"])
        over = stats["spool_bytes"] > self.config.agent.spool_limit_mb * 1024 * 1024
        self.metrics.spool_alarm.set(1 if over else 0)
        if over:
            # Unshipped heartbeats are evidence: never deleted, only alarmed about.
            log.error("event=spool_over_limit bytes=%d limit_mb=%d depth=%d", stats["spool_bytes"],
                      self.config.agent.spool_limit_mb, stats["spool_depth"])
