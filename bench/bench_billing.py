"""Benchmark: billing.bill over a month of 5-minute signed heartbeats (target: under 60 s).

Usage: .venv/bin/python bench/bench_billing.py [--agents 50 --instances 2000 --days 30 --interval 300]

The heartbeats are generated once (signed, chained) and cached under .work/ keyed by the
parameters; the timed part is billing.bill from the compact JWS strings (parse + chain analysis +
aggregation + compute). A baseline measured in the same run (base64url + json.loads of every
payload, one process) is printed as a ratio, so the figure means something on any machine.
"""

import argparse
import base64
import hashlib
import json
import multiprocessing
import random
import resource
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from billing import bill  # noqa: E402
from protocol.heartbeat import sign_heartbeat  # noqa: E402
from protocol.keys import AgentKey  # noqa: E402
from protocol.timefmt import format_time, month_bounds  # noqa: E402

MONTH = "2026-11"
TARGET_S = 60.0
BUNDLES = ["basic", "pro", "enterprise"]
TIERS = [100, 500, 1000, 10000]


def _instance(i: int) -> str:
    return f"TR7-{i:05d}"


def _capacity(i: int) -> dict[str, object]:
    rng = random.Random(i)
    return {"bundle": rng.choice(BUNDLES), "bandwidth_mbps": rng.choice([100, 250, 500, 1000, 5000]),
            "vservices": rng.choice([5, 10, 20])}


def _stops(i: int, m0: int, days: int) -> list[tuple[int, int]]:
    """A third of the instances stop for a few windows of 2..48 hours."""
    rng = random.Random(1_000_000 + i)
    if rng.random() > 0.33:
        return []
    out = []
    for _ in range(rng.randint(1, 3)):
        start = m0 + rng.randrange(days * 24) * 3600 + rng.randrange(3600)
        out.append((start, start + rng.randint(2, 48) * 3600))
    return out


def _agent(args: tuple[int, int, int, int, int, str]) -> tuple[str, int, int]:
    """Sign one agent's month; write it to its part file; return (path, heartbeats, observations)."""
    a, agents, instances, days, interval, out = args
    m0, _ = month_bounds(MONTH)
    key = AgentKey.generate()
    mine = list(range(a, instances, agents))
    vms = {i: str(uuid.UUID(int=random.Random(i).getrandbits(128))) for i in mine}
    stops = {i: _stops(i, m0, days) for i in mine}
    polls = [{"adapter": "vc1", "platform": "vmware", "ok": True, "error": None}]
    prev, seq, n_obs = "0" * 64, 0, 0
    outage = (m0 + (3 + a % 20) * 86400, m0 + (3 + a % 20) * 86400 + 4 * 3600) if a % 5 == 0 else (0, 0)
    path = Path(out + f".part{a}")
    with path.open("w") as f:
        for t in range(m0, m0 + days * 86400, interval):
            if outage[0] <= t < outage[1]:
                continue  # the agent is down: unknown hours for its instances
            seq += 1
            obs = []
            for i in mine:
                running = not any(s <= t < e for s, e in stops[i])
                obs.append({"instance": _instance(i), "adapter": "vc1", "vm": vms[i],
                            "host": f"esx-{i % 16:02d}.dc1", "state": "running" if running else "stopped",
                            "capacity": _capacity(i)})
            payload = {"v": 1, "agent": key.kid, "seq": seq, "prev": prev, "time": format_time(t),
                       "interval": interval, "polls": polls, "observations": obs}
            token = sign_heartbeat(key, payload)
            prev = hashlib.sha256(token.encode("ascii")).hexdigest()
            if a == 1 and seq % 500 == 0:
                continue  # lost in transit: a gap in the chain
            f.write(token + "\n")
            n_obs += len(obs)
    return str(path), seq, n_obs


def generate(agents: int, instances: int, days: int, interval: int) -> tuple[Path, dict[str, int]]:
    cache = ROOT / ".work" / f"bench-billing-a{agents}-i{instances}-d{days}-s{interval}.jws"
    meta_path = cache.with_suffix(".json")
    if cache.exists() and meta_path.exists():
        return cache, json.loads(meta_path.read_text())
    cache.parent.mkdir(parents=True, exist_ok=True)
    jobs = [(a, agents, instances, days, interval, str(cache)) for a in range(agents)]
    heartbeats = observations = 0
    parts = []
    with multiprocessing.get_context("fork").Pool(2) as pool:
        for done, (part, _, n_obs) in enumerate(pool.imap_unordered(_agent, jobs), 1):
            parts.append(Path(part))
            observations += n_obs
            print(f"\rgenerating: {done}/{agents} agents signed", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    with cache.open("w") as out:
        for part in sorted(parts):
            with part.open() as f:
                for line in f:
                    out.write(line)
                    heartbeats += 1
            part.unlink()
    meta = {"heartbeats": heartbeats, "observations": observations}
    meta_path.write_text(json.dumps(meta))
    return cache, meta


def catalog(instances: int, days: int) -> dict[str, object]:
    m0, _ = month_bounds(MONTH)
    licenses = []
    for i in range(instances):
        rng = random.Random(2_000_000 + i)
        kind = rng.random()
        if kind < 0.05:
            continue  # unlicensed
        cap = _capacity(i)
        lic: dict[str, object] = {
            "id": f"SL-{i:05d}", "customer": f"c{i % 100:03d}", "instance": _instance(i),
            "model": "fixed" if kind > 0.85 else "payg",
            "unit": "device_day" if 0.75 < kind <= 0.85 else "hour",
            "start": format_time(m0 + (rng.randrange(3) * 86400 if kind < 0.2 else 0)), "end": None,
            "capacity": [{"from": format_time(m0 - 86400), **cap}]}
        if kind > 0.95:
            lic["capacity"] = [{"from": format_time(m0 - 86400), **cap, "vservices": 5}]  # over-use
        if 0.75 < kind <= 0.85:
            lic.update({"pack": "professional", "day_counts": "active" if i % 2 else "assigned"})
        licenses.append(lic)
    customers = [{"id": f"c{c:03d}", "name": f"Customer {c}",
                  "downgraded": [[format_time(m0 + 10 * 86400), format_time(m0 + 12 * 86400)]] if c % 17 == 0
                  else []} for c in range(100)]
    return {"provider": {"id": "acme", "name": "Acme MSP", "currency": "EUR"},
            "policy": {"gaps": {"mode": "bridge", "max_hours": 6}}, "bundles": BUNDLES,
            "platform_licenses": [{"id": "PL-1", "valid_from": "2026-01-01T00:00:00Z", "valid_to": None}],
            "customers": customers, "licenses": licenses,
            "rates": {"hourly": [{"bundle": b, "max_bandwidth_mbps": t, "price": f"0.{(k + 1) * 150 + j:04d}"}
                                 for k, b in enumerate(BUNDLES) for j, t in enumerate(TIERS)],
                      "monthly": [{"pack": "professional", "price": "12.00"}]}}


def _cpu() -> float:
    """CPU seconds of this process and its waited-for children (bill()'s workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, default=50)
    ap.add_argument("--instances", type=int, default=2000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--interval", type=int, default=300)
    args = ap.parse_args()
    path, meta = generate(args.agents, args.instances, args.days, args.interval)
    t0 = time.perf_counter()
    tokens = path.read_bytes().decode("ascii").split("\n")
    if tokens and not tokens[-1]:
        tokens.pop()
    print(f"loaded {len(tokens)} heartbeats from {path.name} in {time.perf_counter() - t0:.1f} s",
          file=sys.stderr)
    cat = catalog(args.instances, args.days)

    cpu0 = _cpu()
    t0 = time.perf_counter()
    result = bill(tokens, cat, MONTH)
    elapsed = time.perf_counter() - t0
    cpu = _cpu() - cpu0

    t0 = time.perf_counter()
    for tok in tokens:  # baseline: the least any reader must do, decode every payload
        part = tok.split(".", 2)[1]
        json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    baseline = time.perf_counter() - t0

    n, obs = meta["heartbeats"], meta["observations"]
    print(f"heartbeats:        {n}  ({obs} observations)")
    print(f"billing.bill:      {elapsed:.1f} s  ({n / elapsed:,.0f} heartbeats/s, "
          f"{obs / elapsed:,.0f} observations/s)")
    print(f"CPU time:          {cpu:.1f} s in this process and its workers "
          f"(CPU / wall = {cpu / elapsed:.2f}; under 2 means the cores were shared or idle)")
    print(f"2 free cores:      at best {cpu / 2:.0f} s (CPU time / 2: a lower bound, some work is serial)")
    print(f"target:            {TARGET_S:.0f} s  -> {'OK' if elapsed < TARGET_S else 'OVER'} "
          f"({elapsed / TARGET_S:.0%} of the target)")
    print(f"baseline (b64+json.loads, 1 process): {baseline:.1f} s;  "
          f"bill / baseline = {elapsed / baseline:.2f}")
    inv = result.invoice
    print(f"invoice: {len(inv['lines'])} lines, {len(inv['device_days'])} device-day rows, "
          f"total {inv['total']} {inv['currency']}; "
          f"{len(result.usage['rows'])} usage rows, {len(result.usage['unlicensed'])} unlicensed")


if __name__ == "__main__":
    main()
