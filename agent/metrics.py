"""Prometheus metrics of the agent (served only when `metrics_listen` is set)."""

import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server

from agent import __version__
from agent.startup import StartupError

log = logging.getLogger("tr7.agent.metrics")


class Metrics:
    """One registry per agent instance (tests run several in one process)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.build = Info("tr7_agent_build", "Build of the agent", registry=r)
        self.build.info({"version": __version__})
        self.polls = Counter("tr7_agent_polls_total", "Polls per adapter", ["adapter"], registry=r)
        self.poll_failures = Counter("tr7_agent_poll_failures_total", "Failed polls per adapter",
                                     ["adapter"], registry=r)
        self.poll_seconds = Histogram("tr7_agent_poll_duration_seconds", "Duration of one adapter's poll",
                                      ["adapter"], registry=r,
                                      buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600))
        self.instances = Gauge("tr7_agent_observed_instances", "Instances seen by the last poll",
                               ["adapter"], registry=r)
        self.signed = Counter("tr7_agent_heartbeats_signed_total", "Heartbeats signed and spooled",
                              registry=r)
        self.shipped = Counter("tr7_agent_heartbeats_shipped_total",
                               "Heartbeats answered accepted or duplicate", registry=r)
        self.rejected = Counter("tr7_agent_heartbeats_rejected_total", "Heartbeats the collector rejected",
                                registry=r)
        self.ship_failures = Counter("tr7_agent_ship_failures_total",
                                     "Shipping attempts with no usable answer", registry=r)
        self.depth = Gauge("tr7_agent_spool_depth", "Unshipped heartbeats", registry=r)
        self.oldest = Gauge("tr7_agent_spool_oldest_age_seconds", "Age of the oldest unshipped heartbeat",
                            registry=r)
        self.spool_bytes = Gauge("tr7_agent_spool_bytes",
                                 "Bytes of the spool's live data (unshipped, rejected and event rows)",
                                 registry=r)
        self.spool_alarm = Gauge("tr7_agent_spool_over_limit", "1 when the spool exceeds spool_limit_mb",
                                 registry=r)
        self.clock_jumps = Counter("tr7_agent_clock_backwards_total",
                                   "Polls skipped because the clock was behind the last heartbeat",
                                   registry=r)
        self.disk_full = Gauge("tr7_agent_disk_full", "1 while polls cannot be signed for want of disk "
                               "space (the spool still ships)", registry=r)
        self.fatal = Gauge("tr7_agent_fatal", "1 when the agent stopped on a fatal error (spool, disk)",
                           registry=r)
        self.last_poll = Gauge("tr7_agent_last_poll_timestamp_seconds", "Time of the last heartbeat",
                               registry=r)

    def serve(self, listen: str) -> None:
        host, _, port = listen.rpartition(":")
        try:
            start_http_server(int(port), addr=host.strip("[]"), registry=self.registry)
        except OSError as exc:
            # "[Errno 98] Address already in use" named neither the key nor the address, at every restart
            raise StartupError(f"[agent] metrics_listen = {listen}: cannot listen there: "
                               f"{exc.strerror or exc} (another process, or another agent, holds the "
                               "port? choose another one, or leave metrics_listen out)") from exc
        log.info("event=metrics_listening listen=%s", listen)
