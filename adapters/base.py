"""The adapter interface: config schema, observations, poll outcome and the error hierarchy.

Modelled on Ceilometer's inspectors: each platform is one module with one Adapter subclass;
vendor SDK errors are converted to AdapterError subclasses at the module's boundary so the
agent never imports a vendor exception.
"""

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from adapters.credentials import read_secret


class AdapterError(Exception):
    """A poll that could not complete. ``str(err)`` is the short reason put in `polls[].error`."""

    def __init__(self, reason: str, diagnostic: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.diagnostic = diagnostic or reason  # longer text for logs and `tr7-agent check`


class AuthError(AdapterError):
    """Credentials refused by the endpoint."""


class UnreachableError(AdapterError):
    """Endpoint not reachable: DNS, connection refused, TLS failure, timeout."""


class ThrottledError(AdapterError):
    """The endpoint asked us to slow down and the poll could not finish in time."""


class ConfigError(AdapterError):
    """The adapter's configuration cannot work (missing SDK, unreadable secret file)."""


class AdapterConfig(BaseModel):
    """Keys common to every `[[adapters]]` table; each platform extends it with its own."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, description="Unique name of this endpoint within the agent")
    platform: str = Field(description="vmware, hyperv, kvm, proxmox, aws or azure")
    timeout: float = Field(default=60.0, gt=0, le=3600, description=(
        "Seconds one poll may take; below [agent] interval (the default is cut to 80% of a shorter one)"))

    def secret(self, value: str | None, file: str | None, what: str) -> str | None:
        """Resolve a secret given inline or as a file (relative names: $CREDENTIALS_DIRECTORY)."""
        return read_secret(value, file, f"{self.name}: {what}")


@dataclass(frozen=True, slots=True)
class Capacity:
    bundle: str | None = None
    bandwidth_mbps: int | None = None
    vservices: int | None = None

    def to_json(self) -> dict[str, Any] | None:
        out = {k: v for k, v in (("bundle", self.bundle), ("bandwidth_mbps", self.bandwidth_mbps),
                                 ("vservices", self.vservices)) if v is not None}
        return out or None


@dataclass(frozen=True, slots=True)
class Observation:
    """One TR7 instance seen on the platform: the `observations[]` members minus `adapter`."""

    instance: str
    vm: str
    host: str | None
    state: str  # running, stopped, paused, suspended, unknown
    capacity: Capacity | None = None

    def to_json(self, adapter: str) -> dict[str, Any]:
        return {
            "instance": self.instance, "adapter": adapter, "vm": self.vm, "host": self.host,
            "state": self.state, "capacity": self.capacity.to_json() if self.capacity else None,
        }


@dataclass
class PollResult:
    """A completed poll. ``error`` set means part of the endpoint failed (e.g. one region):
    the observations that were made are kept, and the heartbeat says `ok: false` with it."""

    observations: list[Observation] = field(default_factory=list)
    error: str | None = None


class Adapter(ABC):
    """One configured endpoint of one platform."""

    platform: ClassVar[str]
    Config: ClassVar[type[AdapterConfig]]

    def __init__(self, config: AdapterConfig) -> None:
        self.config = config

    @property
    def name(self) -> str:
        return self.config.name

    @abstractmethod
    def poll(self) -> PollResult:
        """Find the TR7 instances now. Raise AdapterError (never a vendor exception) on failure."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; called on reload and shutdown."""
