"""`tr7-agent run`: clock-aligned polls (APScheduler), the spool, the shipper thread, signals,
sd_notify readiness and watchdog, metrics."""

import fcntl
import json
import logging
import os
import signal
import threading
import time
from datetime import UTC
from pathlib import Path

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from adapters.credentials import SecretError
from agent import diskreserve, sdnotify, signedkeys
from agent.collectorclock import AHEAD_LIMIT, CollectorClock
from agent.collectorlink import shipping_identity
from agent.config import Config, ConfigError, load_config, require_adapters
from agent.metrics import Metrics
from agent.poller import Poller
from agent.shipper import Shipper
from agent.slotevents import SlotEvents, back_limit
from agent.spool import Spool
from agent.spooltypes import ClockBehind, SpoolError
from agent.startup import StartupError, aligned_start, check_state_dir, enrolled_at, load_key
from agent.wakeup import Wakeup
from protocol.errors import ProtocolError
from protocol.timefmt import format_time

log = logging.getLogger("tr7.agent")


class Service(SlotEvents):
    def __init__(self, config: Config) -> None:
        self.config = config
        self.metrics = Metrics()
        # The main loop's wake-up, and the flags the wake-up is for (plain attributes: signal
        # handlers set them, and a handler must take no lock, see agent/wakeup.py).
        self.wakeup = Wakeup()
        self.reload_requested = False
        self.fatal: BaseException | None = None
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.ship_stop = threading.Event()
        self.ship_thread: threading.Thread | None = None
        self.ship_id = ""  # what the running shipper was built from (collectorlink.shipping_identity)
        self.collector_clock = CollectorClock()  # never set without a collector: nothing to agree with
        self.last_activity = time.monotonic()
        self.terminating = False
        self.clock_back = 0.0  # seconds the wall clock stepped back, for the next poll to record
        self.scheduler: BackgroundScheduler | None = None
        self.disk_full = False  # the last poll could not commit for want of space (diskreserve)
        self.enrolled_at: int | None = None  # the collector's enrolment instant of our key (enrollment.json)

    # ---- start-up -------------------------------------------------------------------------
    def start(self) -> None:
        settings = self.config.agent
        check_state_dir(settings.state_dir)
        self._lock_state_dir(settings.state_dir)
        diskreserve.release_if_low(settings.state_dir)  # a disk the spool filled: room to open and ship
        self.key = load_key(self.config)
        if not (settings.state_dir / "enrollment.json").exists():
            log.warning("event=not_enrolled kid=%s hint='no enrollment.json: unless this key was registered "
                        "with `tr7-collector agent add` (tr7-agent key), its heartbeats are rejected'",
                        self.key.kid)
        self.enrolled_at = enrolled_at(settings.state_dir / "enrollment.json", self.key.kid)
        # The chain is checked before a missing spool.db is made: an empty one left behind by a
        # refused start read as a new agent to `status`.
        spool = self._open_spool() if settings.spool_path.exists() else None
        try:
            signedkeys.check(settings.state_dir, self.key.kid, spool.head(self.key.kid).seq if spool else 0,
                             settings.spool_path)
        except signedkeys.LostChain as exc:
            if spool is not None:
                spool.close()
            raise StartupError(str(exc)) from exc
        except OSError as exc:  # the check passed; recording the head found the disk full
            if not diskreserve.is_full(exc):
                raise
            log.warning("event=disk_full at=signed_heads action='the record catches up at the next seq'")
        self.spool = spool or self._open_spool()
        diskreserve.ensure(settings.state_dir)
        self.poller = Poller(self.config.adapters)
        if settings.metrics_listen:
            self.metrics.serve(settings.metrics_listen)
        self._start_shipper()
        self.scheduler = BackgroundScheduler(timezone=UTC)
        self.scheduler.start()
        self._schedule(settings.interval)
        head = self.spool.head(self.key.kid)
        log.info("event=started kid=%s seq=%d interval=%d adapters=%d collector=%s", self.key.kid, head.seq,
                 settings.interval, len(self.config.adapters), settings.collector_shown or "none")

    def _open_spool(self) -> Spool:
        try:
            return Spool(self.config.agent.spool_path)
        except SpoolError as exc:
            if diskreserve.is_full(exc, self.config.agent.spool_path.parent):
                raise StartupError(str(exc)) from exc  # said in the error: nothing to move aside
            raise StartupError(f"{exc} (a new spool.db would restart this key's chain at seq 1, which "
                               "the agent refuses: mend what the error names, or move agent.key aside and "
                               "enrol a new key)") from exc

    def _lock_state_dir(self, state_dir: Path) -> None:
        """One agent per state directory: a second one (a unit and a hand-started copy) signed
        into the same spool, and the loser of each slot logged and counted a clock going back
        that never happened. The lock goes with the process (flock), so a crash leaves none."""
        path = state_dir / "agent.lock"
        self._lock_file = open(path, "a+")  # noqa: SIM115 - held for the process's life
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            self._lock_file.seek(0)
            other = self._lock_file.read().strip() or "?"
            raise StartupError(f"another tr7-agent (pid {other}) runs on the state directory {state_dir}: "
                               "one agent per state directory") from exc
        self._lock_file.seek(0)
        self._lock_file.truncate()
        try:  # unbuffered: a write the disk refused must not be retried by a later flush or close
            os.write(self._lock_file.fileno(), f"{os.getpid()}\n".encode())
        except OSError as exc:
            if not diskreserve.is_full(exc):
                raise
            # the lock is held all the same; the pid only names the holder to a second agent
            log.warning("event=disk_full at=lock path=%s (the lock is held; its pid is not written)", path)

    def _schedule(self, interval: int) -> None:
        trigger = IntervalTrigger(seconds=interval, start_date=aligned_start(interval, time.time()),
                                  timezone=UTC)
        # max_instances=1: a slow poll pushes the next one to a later slot, never runs beside it;
        # coalesce: runs missed while suspended become one; a run late by up to one interval still
        # happens (it signs the slot it belongs to).
        assert self.scheduler is not None  # started by start(), before anything schedules
        self.scheduler.add_job(self.poll_job, trigger, id="poll", replace_existing=True, max_instances=1,
                               coalesce=True, misfire_grace_time=interval)

    def _start_shipper(self) -> None:
        settings = self.config.agent
        self.ship_id = shipping_identity(settings)
        if not settings.collector:
            log.warning("event=no_collector hint='heartbeats stay in the spool; use tr7-agent export'")
            return
        self.ship_stop = threading.Event()
        self.collector_clock = CollectorClock()  # another collector (a reload) may keep other time
        shipper = Shipper(settings, Spool(settings.spool_path), self.metrics, clock=self.collector_clock)
        self.ship_thread = threading.Thread(target=shipper.run, name="shipper", daemon=True,
                                            args=(self.ship_stop, self.wake, self._die))
        self.ship_thread.start()

    def _stop_shipper(self, timeout: float) -> None:
        if self.ship_thread is not None:
            self.ship_stop.set()
            self.wake.set()
            self.ship_thread.join(timeout)
            self.ship_thread = None

    # ---- the poll ---------------------------------------------------------------------------
    def _die(self, exc: BaseException) -> None:
        if self.fatal is None:
            self.fatal = exc
        self.metrics.fatal.set(1)
        log.critical("event=fatal reason=%r", str(exc))
        self.wakeup.set()

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

    # ---- reload -----------------------------------------------------------------------------
    def reload(self) -> None:
        try:
            new = require_adapters(load_config(self.config.path))
        except ConfigError as exc:
            log.error("event=reload_failed reason=%r action='keeping the running configuration'", str(exc))
            return
        for warning in new.warnings:
            log.warning("event=config_warning reason=%r", warning)
        old = self.config
        if new.agent.state_dir != old.agent.state_dir:
            log.error("event=reload_refused reason='state_dir cannot change without a restart'")
            return
        self.enrolled_at = enrolled_at(new.agent.state_dir / "enrollment.json", self.key.kid)  # since
        try:  # by content, read now (not in a shipper thread that dies): a token or CA bundle
            # replaced at the same path was never used, as only the names were compared
            ship_changed = shipping_identity(new.agent) != self.ship_id
        except (SecretError, OSError) as exc:
            log.error("event=reload_failed reason=%r action='keeping the running configuration'", str(exc))
            return
        poller = Poller(new.adapters)
        with self.lock:
            old_poller, self.poller, self.config = self.poller, poller, new
        old_poller.close()
        if new.agent.interval != old.agent.interval:
            self._schedule(new.agent.interval)
        if ship_changed:
            self._stop_shipper(30)
            try:
                self._start_shipper()
            except (SecretError, OSError) as exc:  # the token file rewritten meanwhile, not in place
                self.ship_id = ""  # the next reload starts one, whatever the files hold then
                log.error("event=shipper_not_started reason=%r action='heartbeats stay in the spool; "
                          "reload again'", str(exc))
        if new.agent.metrics_listen != old.agent.metrics_listen:
            log.warning("event=reload_partial reason='metrics_listen changes need a restart'")
        log.info("event=reloaded adapters=%d interval=%d", len(new.adapters), new.agent.interval)

    # ---- main loop --------------------------------------------------------------------------
    def serve(self) -> int:
        def terminate(*_: object) -> None:
            self.terminating = True
            self.wakeup.set()

        def reload(*_: object) -> None:
            self.reload_requested = True
            self.wakeup.set()

        self.wakeup.catch_signals()
        signal.signal(signal.SIGTERM, terminate)
        signal.signal(signal.SIGINT, terminate)
        signal.signal(signal.SIGHUP, reload)
        try:
            self.start()
        except (StartupError, SpoolError, SecretError, OSError) as exc:
            self.metrics.fatal.set(1)
            log.critical("event=startup_failed reason=%r", str(exc))
            return 1
        sdnotify.notify(f"READY=1\nSTATUS=polling every {self.config.agent.interval}s")
        wd = sdnotify.watchdog_interval()
        clocks = time.time(), time.monotonic()
        while True:
            self.wakeup.wait(min(wd, 5.0) if wd else 5.0)
            clocks = self.watch_clock(*clocks)
            if self.terminating or self.fatal is not None:
                break
            if self.reload_requested:
                self.reload_requested = False
                sdnotify.notify("RELOADING=1")
                self.reload()
                sdnotify.notify(f"READY=1\nSTATUS=polling every {self.config.agent.interval}s")
                continue
            if wd and self._alive():
                sdnotify.notify("WATCHDOG=1")
        return self.shutdown()

    def _alive(self) -> bool:
        """Whether polls still happen: a scheduler that stopped firing must not be kept alive by
        a main thread that merely runs, so the watchdog pings only while polls are on time."""
        settings = self.config.agent
        slack = 2 * settings.interval + max((a.timeout for a in self.config.adapters), default=0) + 60
        return time.monotonic() - self.last_activity < slack

    def shutdown(self) -> int:
        sdnotify.notify("STOPPING=1")
        # wait=True: the poll in flight finishes and its transaction commits before we exit.
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=True)
        self._stop_shipper(10)
        self.poller.close()
        self.spool.close()
        self.wakeup.close()
        if self.fatal is not None:
            log.critical("event=stopped reason=%r exit=1", str(self.fatal))
            return 1
        log.info("event=stopped exit=0")
        return 0

