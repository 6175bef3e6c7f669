"""Benchmark: `tr7-audit verify` (audit.verify.verify_bundle) on a big bundle, against raw Ed25519 checks.

Usage: .venv/bin/python bench/bench_audit.py [--agents 40 --instances 50 --days 30 --interval 1800]
                                             [--closed 0.9] [--workers N]

The bundle (signed chains, catalog, usage/invoice, closed/ over the first 90% of the lines) is
generated once and cached under .work/ keyed by its parameters. Each measurement runs in a fresh
child process so that its peak RSS is its own: first verify_bundle, then the baseline, the least
any verifier must do: one Ed25519 check of every line on the same number of processes. Prints
ratios to that baseline; never asserts a time.
"""

import argparse
import base64
import json
import multiprocessing
import os
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._agentmonth import agent_key, sign_agent_month  # noqa: E402
from protocol.timefmt import format_time, month_bounds  # noqa: E402

MONTH = "2026-09"
PROVIDER = "acme"


def _sign(args: tuple[int, int, int, int]) -> list[str]:
    ai, n_inst, interval, days = args
    chain = sign_agent_month(agent_key("bench-audit", ai), MONTH, ai, n_inst, interval, ai % interval)
    return chain[: (days * 86400 - ai % interval - 1) // interval + 1]


def _catalog(agents: int, instances: int) -> dict:
    lic = [{"id": f"SL-{a}-{j}", "customer": f"c{a % 20}", "instance": f"TR7-{a:03d}-{j:02d}",
            "model": "fixed" if j % 10 == 9 else "payg", "unit": "hour", "start": "2026-01-01T00:00:00Z",
            "end": None, "capacity": [{"from": "2026-01-01T00:00:00Z", "bundle": "pro",
                                       "bandwidth_mbps": 500, "vservices": 10}]}
           for a in range(agents) for j in range(instances) if j % 25 != 24]  # a few unlicensed
    return {"provider": {"id": PROVIDER, "name": "Acme", "currency": "EUR"},
            "policy": {"gaps": {"mode": "bridge", "max_hours": 6}}, "bundles": ["basic", "pro"],
            "platform_licenses": [{"id": "PL-1", "valid_from": "2026-01-01T00:00:00Z", "valid_to": None}],
            "customers": [{"id": f"c{i}", "name": f"Customer {i}", "downgraded": []} for i in range(20)],
            "licenses": lic,
            "rates": {"hourly": [{"bundle": "pro", "max_bandwidth_mbps": 1000, "price": "0.0450"}],
                      "monthly": []}}


def generate(agents: int, instances: int, days: int, interval: int, closed: float) -> Path:
    """The bundle for these parameters, written once under .work/ (signing is the slow part)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from audit.bundle import ClosedState, write_bundle
    from audit.recompute import bill_lines, sign_log_checkpoint
    from protocol.note import NoteSigner

    out = ROOT / ".work" / f"bench-audit-a{agents}-i{instances}-d{days}-s{interval}-c{closed:g}"
    if (out / "manifest.json").exists():
        return out
    with multiprocessing.get_context("fork").Pool(2) as pool:
        chains = pool.map(_sign, [(a, instances, interval, days) for a in range(agents)])
    # The log in acceptance order: every agent's heartbeats interleaved by time.
    order = sorted((k, a) for a, ch in enumerate(chains) for k in range(len(ch)))
    leaves = [chains[a][k] for k, a in order]
    del chains
    cat = _catalog(agents, instances)
    signer = NoteSigner("collector.bench.example", Ed25519PrivateKey.from_private_bytes(bytes(32)))
    origin = f"collector.bench.example/{PROVIDER}/{MONTH}"
    usage, invoice = bill_lines(leaves, [], cat, MONTH)
    state = None
    if closed < 1:
        prefix = leaves[: int(len(leaves) * closed)]
        c_usage, c_invoice = bill_lines(prefix, [], cat, MONTH)
        state = ClosedState(sign_log_checkpoint(signer, origin, prefix), c_usage, c_invoice)
    m0, m1 = month_bounds(MONTH)
    agents_json = [{"kid": (k := agent_key("bench-audit", a)).kid, "public_key": k.public_b64,
                    "name": f"agent-{a:03d}", "enrolled_at": format_time(m0 - 86400), "revoked_at": None}
                   for a in range(agents)]
    tmp = out.with_name(out.name + ".tmp")
    write_bundle(tmp, provider=PROVIDER, month=MONTH, leaves=leaves, anchors=[],
                 checkpoint=sign_log_checkpoint(signer, origin, leaves), collector_vkey=signer.verifier_key(),
                 agents=agents_json, catalog=cat, usage=usage, invoice=invoice, closed=state,
                 created=format_time(m1 + 86400), overwrite=True)
    tmp.rename(out)
    return out


def _raw_chunk(job: tuple[list[str], dict[str, str]]) -> int:
    from protocol.keys import load_public_key_b64

    lines, pubs = job
    keys = {kid: load_public_key_b64(p) for kid, p in pubs.items()}
    for line in lines:
        head, _, sig = line.rpartition(".")
        kid = json.loads(base64.urlsafe_b64decode(head[: head.index(".")] + "==="))["kid"]
        keys[kid].verify(base64.urlsafe_b64decode(sig + "=="), head.encode("ascii"))
    return len(lines)


def _chunks(path: Path, pubs: dict[str, str]) -> Iterator[tuple[list[str], dict[str, str]]]:
    """The file streamed in chunks of 2,000 lines (imap reads ahead, but a few chunks at a time)."""
    with path.open() as f:
        while chunk := [line.rstrip("\n") for line in islice(f, 2000)]:
            yield chunk, pubs


def _child(what: str, bundle: Path, workers: int) -> dict:
    """One measurement in this (fresh) process: wall, CPU with children, peak RSS of self and workers."""
    t0, c0 = time.perf_counter(), _cpu()
    if what == "verify":
        from audit.verify import verify_bundle

        report = verify_bundle(bundle, workers=workers)
        extra = {"lines": report.lines, "ok": report.ok, "findings": len(report.findings)}
    else:
        pubs = {a["kid"]: a["public_key"] for a in json.loads((bundle / "agents.json").read_text())}
        jobs = _chunks(bundle / "heartbeats.jws", pubs)
        if workers > 1:
            with multiprocessing.get_context("fork").Pool(workers) as pool:
                n = sum(pool.imap_unordered(_raw_chunk, jobs))
        else:
            n = sum(map(_raw_chunk, jobs))
        extra = {"lines": n}
    wall, cpu = time.perf_counter() - t0, _cpu() - c0
    return {"wall": wall, "cpu": cpu, "rss_self_mb": _hwm_mb(),
            "rss_workers_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, **extra}


def _cpu() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _measure(what: str, bundle: Path, workers: int) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", what, "--bundle", str(bundle),
                           "--workers", str(workers)], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, default=40)
    ap.add_argument("--instances", type=int, default=50, help="instances per agent")
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--interval", type=int, default=1800, help="poll interval, seconds")
    ap.add_argument("--closed", type=float, default=0.9, help="closed/ over this fraction of lines (1: none)")
    ap.add_argument("--workers", type=int, default=None, help="processes (default: what verify picks)")
    ap.add_argument("--child", choices=["verify", "raw"], help=argparse.SUPPRESS)
    ap.add_argument("--bundle", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args.bundle, args.workers)))
        return
    t0 = time.perf_counter()
    bundle = generate(args.agents, args.instances, args.days, args.interval, args.closed)
    print(f"bundle: {bundle.relative_to(ROOT)} ({time.perf_counter() - t0:.1f} s to get)", file=sys.stderr)
    if args.workers is None:
        from audit.verify import _default_workers

        n = sum(1 for _ in (bundle / "heartbeats.jws").open("rb"))
        args.workers = _default_workers(n)
    v = _measure("verify", bundle, args.workers)
    r = _measure("raw", bundle, args.workers)
    lines = v["lines"]
    print(f"load (uptime):     {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; workers {args.workers}")
    print(f"lines:             {lines}  (verify ok={v['ok']}, {v['findings']} findings)")
    print(f"verify wall:       {v['wall']:.1f} s  (CPU {v['cpu']:.1f} s, {lines / v['wall']:,.0f} lines/s)")
    print(f"raw Ed25519 wall:  {r['wall']:.1f} s  (CPU {r['cpu']:.1f} s)")
    print(f"verify / raw:      {v['wall'] / r['wall']:.2f} wall, {v['cpu'] / r['cpu']:.2f} CPU")
    print(f"peak RSS verify:   {v['rss_self_mb']:.0f} MB main process, {v['rss_workers_mb']:.0f} MB "
          f"largest worker; {1000 * v['rss_self_mb'] / lines:.2f} MB per 1,000 lines")
    print(f"peak RSS raw:      {r['rss_self_mb']:.0f} MB main process, {r['rss_workers_mb']:.0f} MB "
          f"largest worker; verify / raw (main) = {v['rss_self_mb'] / r['rss_self_mb']:.2f}")


if __name__ == "__main__":
    main()
