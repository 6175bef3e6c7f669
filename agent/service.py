"""`tr7-agent run`: clock-aligned polls (APScheduler; each poll: agent/polljob.py), the spool, the shipper
thread, signals, sd_notify readiness and watchdog, metrics."""

import fcntl
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
from agent.collectorclock import CollectorClock
from agent.collectorlink import shipping_identity
from agent.config import Config, ConfigError, load_config, require_adapters
from agent.metrics import Metrics
from agent.poller import Poller
from agent.polljob import PollJob
from agent.shipper import Shipper
from agent.spool import Spool
from agent.spooltypes import SpoolError
from agent.startup import StartupError, aligned_start, check_state_dir, enrolled_at, load_key
from agent.wakeup import Wakeup

log = logging.getLogger("tr7.agent")
# Seconds a stop spends closing the adapters' sessions, after the poll in flight and the shipper: with
# the default timeout (60 s) the whole stop stays within the unit's TimeoutStopSec (2 min).
CLOSE_BUDGET = 30.0


class Service(PollJob):
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
        self.retired: list[Poller] = []  # pollers a reload replaced, closing once their polls end
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

    # ---- a fatal error (the poll's: agent/polljob.py, or the shipper's) -------------------------
    def _die(self, exc: BaseException) -> None:
        if self.fatal is None:
            self.fatal = exc
        self.metrics.fatal.set(1)
        log.critical("event=fatal reason=%r", str(exc))
        self.wakeup.set()

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
        old_poller.close(linger=True)  # a poll of the old one under way ends as it began
        self.retired = [p for p in self.retired if p.closing is not None and p.closing.is_alive()]
        self.retired.append(old_poller)
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
        # The sessions are closed (a vSphere logout) within one budget, the pollers a reload retired
        # included (their polls end by their timeout): one after another, a stop ran past systemd's
        # TimeoutStopSec (a review). What is left then is ended by the servers' idle timeouts.
        end = time.monotonic() + CLOSE_BUDGET
        self.poller.close(budget=CLOSE_BUDGET)
        for poller in self.retired:
            poller.closed(max(0.0, end - time.monotonic()))
        self.spool.close()
        self.wakeup.close()
        if self.fatal is not None:
            log.critical("event=stopped reason=%r exit=1", str(self.fatal))
            return 1
        log.info("event=stopped exit=0")
        return 0

