"""Test-only: make platform `kvm` resolve to the fake adapter in agent subprocesses."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import adapters.registry

adapters.registry.MODULES["kvm"] = "fake_adapter"
