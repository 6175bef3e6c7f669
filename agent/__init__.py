"""tr7-agent: polls hypervisors and clouds for TR7 appliances and ships signed heartbeats."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tr7-meter")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"
