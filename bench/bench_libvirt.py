"""Benchmark: one KVM adapter poll over 2,000 libvirt domains (test:/// driver): time and RSS."""

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from adapters.kvm import ADAPTER

ROOT = Path(__file__).resolve().parents[1]


def load_helper(name: str) -> Any:
    path = ROOT / "tests/adapters/libvirt" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"tr7_tests_{name}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def rss_mib(field: str = "VmRSS") -> float:
    """Resident set size (or VmHWM: its peak) of this process, from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(label: str, uri: str, runs: int, note: str) -> None:
    adapter = ADAPTER(ADAPTER.Config(name="bench", uri=uri))
    baseline = rss_mib()
    t = time.perf_counter()
    result = adapter.poll()  # includes opening the connection
    first = time.perf_counter() - t
    after_first = rss_mib()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        result = adapter.poll()
        times.append(time.perf_counter() - t)
    after = rss_mib()
    adapter.close()
    print(f"-- {label}: {len(result.observations)} TR7 instances per poll")
    print(f"   first poll (connect + list + metadata): {first:.3f}s; next {runs} polls: "
          f"min {min(times):.3f}s, max {max(times):.3f}s")
    print(f"   RSS: {baseline:.1f} MiB before the first poll, {after_first:.1f} MiB after it "
          f"(+{after_first - baseline:.1f} MiB{note}), {after:.1f} MiB after {runs} more polls")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--domains", type=int, default=2000)
    ap.add_argument("--tag-every", type=int, default=2, help="one domain in N carries <tr7:license>")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    nodexml, daemon = load_helper("nodexml"), load_helper("daemon")
    with tempfile.TemporaryDirectory() as tmp:
        doms = [nodexml.Dom(f"vm{i:05d}", state=1 + i % 7,
                            license=({"instance": f"tr7-{i:05d}", "bundle": "pro", "bandwidth_mbps": "1000"}
                                     if i % args.tag_every == 0 else None))
                for i in range(args.domains)]
        node = Path(tmp) / "node.xml"
        uri = nodexml.write_node(node, doms)
        print(f"{args.domains} domains, one in {args.tag_every} tagged")
        if Path("/usr/sbin/libvirtd").exists():
            # first, so that the baseline is not inflated by the in-process driver of the run below
            libvirtd = daemon.Libvirtd(Path(tmp) / "libvirtd").start()
            try:
                measure("through libvirtd (remote protocol, one RPC per domain)", libvirtd.uri(node),
                        args.runs, "")
            finally:
                libvirtd.stop()
        else:
            print("-- libvirtd not installed (Debian libvirt-daemon): remote-protocol run skipped")
        measure("in-process test:/// driver", uri, args.runs,
                ", includes the test driver's in-process copy of the domains")
    print(f"peak RSS (VmHWM) of this process: {rss_mib('VmHWM'):.1f} MiB")


if __name__ == "__main__":
    main()
