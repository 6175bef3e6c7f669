"""An unchanged poll signs the same `observations` text, whatever order the SDK listed the VMs in."""

import json
import random

from adapters.base import AdapterConfig, Observation, PollResult
from agent.poller import _checked


def test_observations_in_one_order_whatever_the_sdk_order() -> None:
    cfg = AdapterConfig(name="kvm-local", platform="kvm")
    seen = [Observation(instance=f"TR7-{i % 7:04d}", vm=f"vm-{i:03d}", host="h1", state="running")
            for i in range(40)]
    texts = set()
    for seed in range(5):
        listed = seen[:]
        random.Random(seed).shuffle(listed)
        obs, error = _checked(cfg, PollResult(listed))
        assert error is None and len(obs) == 40
        texts.add(json.dumps(obs, separators=(",", ":")))
    assert len(texts) == 1
    assert [o["vm"] for o in json.loads(texts.pop())] == sorted(o.vm for o in seen)
