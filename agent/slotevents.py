"""What keeps a poll slot from being signed, said and counted: the clock gone back or ahead, a slot
before the key's enrolment, a full disk (the Service's half that judges slots, not schedules them)."""

import json
import logging
import time
from typing import TYPE_CHECKING, Any

from agent import diskreserve
from agent.config import Config
from agent.metrics import Metrics
from agent.spool import Spool
from agent.spooltypes import SpoolError
from protocol.timefmt import format_time

if TYPE_CHECKING:
    from apscheduler.schedulers.background import BackgroundScheduler

CLOCK_STEP = 2.0  # seconds the wall clock may lag the monotonic one between two wakes (5 s)
log = logging.getLogger("tr7.agent")


def back_limit(interval: int) -> int:
    """How far before the last heartbeat's time a poll slot may be and still be skipped (a clock
    stepped back a little catches up soon); from this far on it is signed with the earlier time."""
    return max(2 * interval, 600)


class SlotEvents:
    """Mixed into agent.service.Service, whose attributes these are."""

    config: Config
    metrics: Metrics
    spool: Spool
    scheduler: "BackgroundScheduler | None"
    clock_back: float
    disk_full: bool

    def _schedule(self, interval: int) -> Any:
        raise NotImplementedError  # Service's own: the slots re-aligned to the clock

    def _clock_event(self, when: int, last: int, action: str) -> None:
        self.metrics.clock_jumps.inc()
        detail = {"now": format_time(int(time.time())), "poll": format_time(when), "last": format_time(last),
                  "action": action}
        log.warning("event=clock_backwards poll=%s last_heartbeat=%s action=%s", detail["poll"],
                    detail["last"], action)
        self.spool.record_event("clock_backwards", json.dumps(detail))

    def _ahead_event(self, when: int, ahead: float) -> None:
        self.metrics.clock_jumps.inc()
        detail = {"now": format_time(int(time.time())), "poll": format_time(when),
                  "ahead_seconds": round(ahead)}
        log.error("event=clock_ahead poll=%s ahead_s=%d action='not signed: the collector would reject it as "
                  "time.future, and the chain would wait for that time; fix the clock (NTP)'", detail["poll"],
                  round(ahead))
        self.spool.record_event("clock_ahead", json.dumps(detail))

    def _disk_full(self, when: int, exc: SpoolError) -> None:
        # Not fatal (it was): stopped, the agent could not ship the backlog that fills the disk,
        # and every restart failed on it. The slot is lost, as it was; the shipper goes on, with
        # the reserve's room to record what it ships, and signing resumes once there is room.
        self.disk_full = True
        self.metrics.disk_full.set(1)
        if diskreserve.release(self.config.agent.state_dir):
            self.spool.shrink()  # the WAL into the file while the reserve's room is there, and cut
        log.critical("event=disk_full poll=%s reason=%r action='not signed; the spool ships on, which frees "
                     "its space; free space on the file system of state_dir'", format_time(when), str(exc))

    def _disk_low(self, when: int) -> None:
        self.disk_full = True
        self.metrics.disk_full.set(1)
        log.error("event=disk_full poll=%s action='not signed: waiting for %d KiB free on the file system of "
                  "state_dir (the reserve made again); the spool ships on'", format_time(when),
                  (diskreserve.SIZE + diskreserve.HEADROOM) >> 10)

    def _before_enrolment_event(self, when: int, enrolled: int) -> None:
        # A slot before the collector's enrolment instant is rejected as key.window (§1), and a key
        # whose seq 1 is rejected begins every month's chain unanchored: not signed, the seq kept.
        self.metrics.clock_jumps.inc()
        detail = {"now": format_time(int(time.time())), "poll": format_time(when),
                  "enrolled_at": format_time(enrolled)}
        log.warning("event=before_enrolment poll=%s enrolled_at=%s action='not signed: the collector would "
                    "reject it as key.window (our clock is behind the collector's, or the key was enrolled "
                    "for a later time)'", detail["poll"], detail["enrolled_at"])
        self.spool.record_event("before_enrolment", json.dumps(detail))

    def watch_clock(self, wall: float, mono: float) -> tuple[float, float]:
        """Called by the main loop at each wake with the clocks read at the last one. A wall clock
        stepped back does not fire the scheduler at all (its next run is still in the future), so
        the poll's own check never saw it: polls went silent until the clock caught up. Log it,
        count it, re-align the slots to the new clock, and have the next poll record it."""
        now_wall, now_mono = time.time(), time.monotonic()
        back = (now_mono - mono) - (now_wall - wall)
        if back > CLOCK_STEP:
            self.metrics.clock_jumps.inc()
            log.warning("event=clock_backwards back_seconds=%d action=reschedule", round(back))
            self.clock_back += back
            if self.scheduler is not None:
                self._schedule(self.config.agent.interval)
        return now_wall, now_mono
