"""Benchmark: Proxmox poll of a large cluster, concurrent config reads vs one at a time.

Usage: .venv/bin/python bench/bench_proxmox.py [--vms 1000 --latency 0.005 --workers 8]

Runs the unmodified adapter against the PVE simulator of tests/adapters/proxmox over TLS, with a
fixed latency added to every per-VM API call (a real pveproxy round trip is milliseconds). Prints
seconds per poll for workers=1 and workers=N and their ratio, which is what the thread pool buys.
"""

import argparse
import importlib.util
import ssl
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import trustme

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adapters.proxmox import ProxmoxAdapter, ProxmoxConfig  # noqa: E402


def load_sim() -> Any:
    path = ROOT / "tests/adapters/proxmox/pve_sim.py"
    spec = importlib.util.spec_from_file_location("pve_sim", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["pve_sim"] = module
    spec.loader.exec_module(module)
    return module


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vms", type=int, default=1000)
    ap.add_argument("--latency", type=float, default=0.005)
    ap.add_argument("--workers", type=int, default=8)
    args = ap.parse_args()
    sim = load_sim()
    state = sim.PveState(latency=args.latency)
    state.vms = [sim.SimVM(f"pve{i % 3 + 1}", 100 + i, f"vm{i}",
                           description=f"tr7.instance: TR7-{i}" if i % 10 == 0 else "plain")
                 for i in range(args.vms)]
    ca = trustme.CA()
    server = sim.QuietServer(("127.0.0.1", 0), type("H", (sim.PveHandler,), {"state": state}))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    server.socket = ctx.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with tempfile.NamedTemporaryFile(suffix=".pem") as ca_file:
        ca.cert_pem.write_to_path(ca_file.name)
        user, _, rest = state.token.partition("!")
        name, _, secret = rest.partition("=")
        timings = {}
        for workers in (1, args.workers):
            adapter = ProxmoxAdapter(ProxmoxConfig(
                name="bench", platform="proxmox", url=f"https://127.0.0.1:{server.server_address[1]}",
                token_id=f"{user}!{name}", token_secret=secret, ca_file=ca_file.name, timeout=600,
                workers=workers))
            start = time.perf_counter()
            result = adapter.poll()
            timings[workers] = time.perf_counter() - start
            assert result.error is None and len(result.observations) == len(range(0, args.vms, 10))
            print(f"workers={workers:2d}: {timings[workers]:.2f} s per poll of {args.vms} VMs "
                  f"({1000 * timings[workers] / args.vms:.2f} ms/VM)")
    server.shutdown()
    print(f"speed-up workers={args.workers} vs 1: {timings[1] / timings[args.workers]:.1f}x "
          f"(per-call latency {args.latency * 1000:g} ms)")


if __name__ == "__main__":
    main()
