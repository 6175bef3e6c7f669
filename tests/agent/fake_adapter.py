"""A fake `kvm` adapter for the agent's tests: N instances, optional delay or failure."""

import threading
import time

from pydantic import Field

from adapters.base import Adapter, AdapterConfig, AdapterError, Capacity, Observation, PollResult
from adapters.fanout import within


class FakeConfig(AdapterConfig):
    instances: int = Field(default=2, ge=0, description="How many TR7 instances to report")
    delay: float = Field(default=0.0, ge=0, description="Seconds each poll sleeps")
    fail: str | None = Field(default=None, description="Raise AdapterError with this reason")
    prefix: str = Field(default="tr7-", description="Instance id prefix")
    hang: bool = Field(default=False, description="Set-up never answers, as a frozen endpoint's SDK call")
    close_delay: float = Field(default=0.0, ge=0, description="Seconds close() takes (a logout's answer)")


class FakeAdapter(Adapter):
    platform = "kvm"
    Config = FakeConfig

    def poll(self) -> PollResult:
        cfg = self.config
        assert isinstance(cfg, FakeConfig)
        if cfg.hang:
            lock = self.__dict__.setdefault("_lock", threading.Lock())
            within(time.monotonic() + cfg.timeout * 0.9, threading.Event().wait, what="signing in",
                   lock=lock, thread_name=f"fake-setup-{cfg.name}")
        if cfg.delay:
            self.__dict__["polling"] = True  # under way: a test may act now
            time.sleep(cfg.delay)
            if self.__dict__.get("closed"):  # as a real adapter's session, gone under its poll
                raise AdapterError("closed during the poll")
        if cfg.fail:
            raise AdapterError(cfg.fail, f"diagnostic: {cfg.fail}")
        return PollResult([
            Observation(instance=f"{cfg.prefix}{i:05d}", vm=f"00000000-0000-4000-8000-{i:012d}",
                        host="host-a", state="running",
                        capacity=Capacity(bundle="standard", bandwidth_mbps=1000, vservices=4))
            for i in range(cfg.instances)])


    def close(self) -> None:
        cfg = self.config
        assert isinstance(cfg, FakeConfig)
        time.sleep(cfg.close_delay)
        self.__dict__["closed"] = True


ADAPTER = FakeAdapter
