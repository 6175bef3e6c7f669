"""Poll every configured adapter concurrently, each bounded by its own timeout."""

import json
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

from adapters.base import Adapter, AdapterConfig, AdapterError, Observation, PollResult
from adapters.registry import adapter_class
from protocol.errors import ProtocolError
from protocol.payload import validate_payload

log = logging.getLogger("tr7.agent.poller")
_PROBE_KID = "0" * 32
MAX_REASON = 200


@dataclass
class AdapterOutcome:
    name: str
    platform: str
    ok: bool
    error: str | None
    observations: list[dict[str, Any]]
    seconds: float
    diagnostic: str | None = None


@dataclass
class PollOutcome:
    adapters: list[AdapterOutcome] = field(default_factory=list)

    @property
    def polls(self) -> list[dict[str, Any]]:
        return [{"adapter": a.name, "platform": a.platform, "ok": a.ok, "error": a.error}
                for a in self.adapters]

    @property
    def observations(self) -> list[dict[str, Any]]:
        return [o for a in self.adapters for o in a.observations]


def _text(text: str) -> str:
    """``text`` as valid Unicode: a lone surrogate (an SDK's undecodable byte, half a UTF-16 pair)
    becomes '?'; it cannot be written as UTF-8, and signing the heartbeat failed for every adapter."""
    return text.encode("utf-8", "replace").decode("utf-8")


def _short(text: str) -> str:
    text = " ".join(str(text).split()) or "error"
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 3] + "..."


def _order(o: Observation) -> tuple[str, str]:
    return o.vm, o.instance


def _checked(cfg: AdapterConfig, result: PollResult) -> tuple[list[dict[str, Any]], str | None]:
    """Wire-form observations; an adapter that yields something §2 forbids fails alone, so one bad
    adapter never stops the heartbeat of the others."""
    # In one stable order (vm, then instance): SDKs list VMs in an order they do not promise
    # (libvirt's, vSphere's property collector), and an unchanged poll then signs the same
    # `observations` text again, which the collector decodes once (protocol/fastpayload.py).
    obs = [o.to_json(cfg.name) for o in sorted(result.observations, key=_order)]
    probe = {"v": 1, "agent": _PROBE_KID, "seq": 1, "prev": "0" * 64, "time": "2000-01-01T00:00:00Z",
             "interval": 60, "polls": [{"adapter": cfg.name, "platform": cfg.platform, "ok": True,
                                        "error": None}], "observations": obs}
    try:
        validate_payload(probe, _PROBE_KID)
        # §2: the payload is UTF-8. validate_payload checks types and forms, not that a string is
        # valid Unicode: a lone surrogate (VM notes, tags) only failed when the whole heartbeat
        # was signed, and the agent stopped (tests/agent/test_poller_text.py).
        json.dumps(obs, ensure_ascii=False).encode("utf-8")
    except ProtocolError as exc:
        return [], f"invalid observation from adapter: {exc}"
    except UnicodeEncodeError:
        return [], "invalid observation from adapter: a string is not valid Unicode (a lone surrogate)"
    return obs, result.error


class Poller:
    """Holds the adapters built from the configuration; rebuilt on reload."""

    def __init__(self, configs: list[AdapterConfig]) -> None:
        self.configs = configs
        self.adapters: dict[str, Adapter | None] = {}
        self.build_errors: dict[str, str] = {}
        self.pending: dict[str, Future[PollResult]] = {}
        self.durations: dict[str, float] = {}
        self.closing: threading.Thread | None = None  # close(linger=True)'s, while it waits
        # poll_all's submit-and-store and close()'s shutdown-and-look, one at a time: a close between
        # a submit and its store saw no poll running and closed the adapters under it (a review)
        self._submitting = threading.Lock()
        self.pool = ThreadPoolExecutor(max_workers=max(2, 2 * len(configs)), thread_name_prefix="poll")
        for cfg in configs:
            self._build(cfg)

    def _build(self, cfg: AdapterConfig) -> Adapter | None:
        try:
            adapter = adapter_class(cfg.platform)(cfg)
        except AdapterError as exc:
            self.build_errors[cfg.name] = exc.reason
            log.error("adapter=%s event=build_failed reason=%r", cfg.name, exc.diagnostic)
            adapter = None
        self.adapters[cfg.name] = adapter
        return adapter

    def _run(self, cfg: AdapterConfig) -> PollResult:
        adapter = self.adapters.get(cfg.name) or self._build(cfg)
        if adapter is None:
            raise AdapterError(self.build_errors.get(cfg.name, "adapter could not be created"))
        t0 = time.monotonic()
        try:
            return adapter.poll()
        finally:
            self.durations[cfg.name] = time.monotonic() - t0

    def poll_all(self) -> PollOutcome:
        start = time.monotonic()
        futures: dict[str, Future[PollResult] | None] = {}
        self.durations.clear()
        with self._submitting:
            for cfg in self.configs:
                old = self.pending.get(cfg.name)
                # A hung poll cannot be killed (threads); never start a second one beside it.
                if old is not None and not old.done():
                    futures[cfg.name] = None
                else:
                    futures[cfg.name] = self.pending[cfg.name] = self.pool.submit(self._run, cfg)
        out = PollOutcome()
        for cfg in self.configs:
            fut = futures[cfg.name]
            obs: list[dict[str, Any]] = []
            error: str | None
            diagnostic: str | None = None
            if fut is None:
                error = "previous poll still running"
            else:
                try:
                    result = fut.result(timeout=max(0.0, start + cfg.timeout - time.monotonic()))
                    obs, error = _checked(cfg, result)
                    if error is not None and len(error) > MAX_REASON:
                        # the heartbeat carries a short reason; the log and `check` the whole of it
                        error, diagnostic = _short(error), error
                except FutureTimeout:
                    error = f"timeout after {cfg.timeout:g}s"
                except AdapterError as exc:
                    error, diagnostic = _short(exc.reason), exc.diagnostic
                except Exception as exc:
                    log.exception("adapter=%s event=poll_crashed", cfg.name)
                    error = _short(f"internal error: {type(exc).__name__}: {exc}")
            seconds = self.durations.get(cfg.name, time.monotonic() - start)
            if error is not None:
                error = _text(error)
                log.warning("adapter=%s platform=%s event=poll_failed reason=%r", cfg.name, cfg.platform,
                            diagnostic or error)
            out.adapters.append(AdapterOutcome(cfg.name, cfg.platform, error is None, error, obs, seconds,
                                               diagnostic))
        return out

    def close(self, linger: bool = False, budget: float | None = None) -> None:
        """Close the adapters, all at once, waiting at most ``budget`` seconds (by default the longest
        adapter timeout; each close bounds itself too). ``linger`` (a reload): those of polls still
        running once they end (at most their timeout), in a thread of its own: closed under a poll,
        an adapter's session went (vSphere's logout), and the slot was signed with that adapter
        failed, its instances unseen."""
        with self._submitting:
            # A reload lets the polls already asked for run, queued ones too: cancelled, the slot was
            # signed with "internal error: CancelledError" for them. A stop cancels them.
            self.pool.shutdown(wait=False, cancel_futures=not linger)
            running = [f for f in self.pending.values() if not f.done()]
        longest = max((c.timeout for c in self.configs), default=0.0)
        if not (linger and running):
            self._close_adapters(longest if budget is None else budget)
            return

        def after() -> None:
            wait(running, timeout=longest)
            self._close_adapters(longest)

        self.closing = threading.Thread(target=after, name="poller-close", daemon=True)
        self.closing.start()

    def closed(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for a lingering close (a stop soon after a reload: the old
        adapters' sessions are logged out before the process ends, not left to their idle timeout)."""
        if self.closing is not None:
            self.closing.join(timeout)

    def _close_adapters(self, budget: float) -> None:
        """Each adapter's close in a daemon thread of its own, waited for ``budget`` seconds in all:
        one after another, a stop took up to 0.9 x timeout per vSphere adapter whose logout dripped,
        past systemd's TimeoutStopSec (a review). What is left then ends with the process."""
        def close(adapter: Adapter) -> None:
            try:
                adapter.close()
            except Exception:
                log.exception("event=adapter_close_failed")

        closing = [threading.Thread(target=close, args=(a,), name=f"close-{name}", daemon=True)
                   for name, a in self.adapters.items() if a is not None]
        for t in closing:
            t.start()
        end = time.monotonic() + budget
        for t in closing:
            t.join(max(0.0, end - time.monotonic()))
            if t.is_alive():  # its session is left to the server's idle timeout
                log.warning("adapter=%s event=close_unfinished budget=%g", t.name.removeprefix("close-"),
                            budget)
