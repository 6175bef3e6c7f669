"""Benchmark: the vSphere adapter's one-retrieval poll vs a naive per-VM pyvmomi loop, on vcsim."""

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from adapters.vmware import ADAPTER, STATES

ROOT = Path(__file__).resolve().parents[1]
NAIVE_BUDGET = 120.0  # seconds we are willing to spend on the naive loop before sampling


def load_vcsim() -> Any:
    spec = importlib.util.spec_from_file_location("tr7_tests_vcsim", ROOT / "tests/adapters/vsphere/vcsim.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def naive(vm: Any) -> tuple[str, str, str | None, str] | None:
    """What a straightforward script does: attribute walks, one round trip (or more) each."""
    if vm.config.template:
        return None
    meta = {o.key[len("guestinfo."):]: str(o.value) for o in vm.config.extraConfig
            if o.key.startswith("guestinfo.tr7.")}
    _ = vm.customValue  # custom attributes, as the adapter reads them too
    if "tr7.instance" not in meta:
        return None
    host = vm.runtime.host
    return (meta["tr7.instance"], vm.config.instanceUuid, host.name if host else None,
            STATES.get(str(vm.runtime.powerState), "unknown"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--vms", type=int, default=5000)
    ap.add_argument("--hosts", type=int, default=16)
    ap.add_argument("--tag-every", type=int, default=5, help="tag one VM in N as a TR7 appliance")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    vcsim = load_vcsim()

    t0 = time.perf_counter()
    server = vcsim.start(vms=args.vms, hosts=args.hosts)
    try:
        si = vcsim.connect(server.url)
        vms = vcsim.all_vms(si)
        for i, vm in enumerate(vms[::args.tag_every]):
            vcsim.tag(vm, instance=f"tr7-{i:05d}", bundle="pro", bandwidth_mbps="1000")
        print(f"simulator: {len(vms)} VMs on {args.hosts} hosts, {len(vms[::args.tag_every])} tagged "
              f"(setup {time.perf_counter() - t0:.1f}s)")

        adapter = ADAPTER(ADAPTER.Config(name="bench", url=server.url, username=vcsim.USER,
                                         password=vcsim.PASSWORD))
        adapter.poll()  # log in; the timed polls below reuse the session like the agent does
        times = []
        for _ in range(args.runs):
            t = time.perf_counter()
            result = adapter.poll()
            times.append(time.perf_counter() - t)
        poll_s = statistics.median(times)
        print(f"adapter poll (one paged RetrievePropertiesEx): median {poll_s:.3f}s over {args.runs} runs "
              f"(min {min(times):.3f}s), {len(result.observations)} instances")

        # the naive loop: time a probe, then run all VMs if it fits the budget, else a sample
        t = time.perf_counter()
        probe = [naive(vm) for vm in vms[:50]]
        per_vm = (time.perf_counter() - t) / 50
        sample = vms if per_vm * len(vms) <= NAIVE_BUDGET else vms[: max(50, int(NAIVE_BUDGET / 4 / per_vm))]
        t = time.perf_counter()
        found = [r for vm in sample if (r := naive(vm)) is not None]
        naive_s = time.perf_counter() - t
        if len(sample) == len(vms):
            print(f"naive per-VM loop over all {len(vms)} VMs: {naive_s:.2f}s")
            naive_total = naive_s
        else:
            naive_total = naive_s / len(sample) * len(vms)
            print(f"naive per-VM loop MEASURED ON A SAMPLE of {len(sample)} of {len(vms)} VMs "
                  f"({naive_s:.2f}s); extrapolated to all VMs: {naive_total:.1f}s")
        ours = {(o.instance, o.vm, o.host, o.state) for o in result.observations}
        assert set(found) <= ours and probe is not None, "naive loop and adapter disagree"
        print(f"speed-up: {naive_total / poll_s:.0f}x with the median poll, {naive_total / min(times):.0f}x "
              f"with the best (goal >= 30x; both sides share this machine's CPU with the simulator)")
        vcsim.disconnect(si)
        adapter.close()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
