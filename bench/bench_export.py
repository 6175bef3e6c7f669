"""The memory of `tr7-collector export` does not grow with the month's JWS: peak RSS for a month
of N heartbeats and one of 4N, against the heartbeats.jws each bundle holds, in the same run
(what still grows is each line's chain fields, ~0.4 kB: small beside the 10 kB JWS here).

Before the export streamed the leaves, a month of 178,560 heartbeats (1.69 GB of JWS) peaked at
10.9 GB and one of 1.7 million died at 15.6 GB. Each export runs in its own process (its peak
RSS from the kernel); the months are 40 agents x 50 instances on SQLite. Never asserts a time.
Usage:
    .venv/bin/python bench/bench_export.py [--heartbeats 12000]
"""

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._agentmonth import agent_key, sign_agent_month
from bench.bench_bill import catalog
from collector import credentials, db, registry
from collector.ingest import ingest_lines
from collector.settings import Settings
from protocol.timefmt import month_bounds

MONTH = "2026-09"
AGENTS = 40
PER_AGENT = 50


def _sign(args: tuple[int, int]) -> list[str]:
    a, interval = args
    return sign_agent_month(agent_key("export", a), MONTH, a, PER_AGENT, interval, 60 + a)


def month(tmp: Path, heartbeats: int) -> Settings:
    """A collector whose month holds about ``heartbeats`` heartbeats of 50 observations."""
    m0, m1 = month_bounds(MONTH)
    interval = max(60, (m1 - m0) * AGENTS // heartbeats)
    with ProcessPoolExecutor() as pool:
        chains = list(pool.map(_sign, [(a, interval) for a in range(AGENTS)]))
    st = Settings(tmp / f"data-{heartbeats}", f"sqlite:///{tmp / f'c-{heartbeats}.db'}", "bench")
    engine = st.open()
    db.write_tx(engine, lambda c: registry.apply_catalog(c, catalog(AGENTS)))
    for a in range(AGENTS):
        key = agent_key("export", a)
        db.write_tx(engine, lambda c, k=key, a=a: credentials.add_agent(c, "acme", f"a{a}", k.public_b64, 0))
    lines = [x for ch in chains for x in ch]
    for i in range(0, len(lines), 2000):
        ingest_lines(engine, lines[i : i + 2000], m1)
    engine.dispose()
    return st


# The export's own peak, read by itself at exit (VmHWM starts again at exec): a child's
# ru_maxrss also counts the benchmark's pages it shared between fork and exec (~600 MB here).
_RUN = """
import sys
from collector.cli import main
try:
    code = main()
finally:
    hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM"))
    print(int(hwm.split()[1]) * 1024, file=open(sys.argv[-1], "w"))
sys.exit(code)
"""


def export_peak(st: Settings, out: Path) -> tuple[float, int, float]:
    """(seconds, bytes of heartbeats.jws, peak RSS in bytes) of one `tr7-collector export` process."""
    peak = out.with_suffix(".peak")
    args = ["export", "--data-dir", str(st.data_dir), "--db", st.db_url, "--provider", "acme",
            "--month", MONTH, "--out", str(out)]
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", _RUN.replace("main()", f"main({args!r})"), str(peak)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   cwd=Path(__file__).resolve().parent.parent)
    took = time.perf_counter() - t
    return took, (out / "heartbeats.jws").stat().st_size, float(peak.read_text())


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--heartbeats", type=int, default=12_000, help="the smaller month (the larger is 4x)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tr7-bench-export-"))
    try:
        small, large = month(tmp, args.heartbeats), month(tmp, 4 * args.heartbeats)
        t1, size1, rss1 = export_peak(small, tmp / "b1")
        t4, size4, rss4 = export_peak(large, tmp / "b4")
        print(f"month of ~{args.heartbeats:,} heartbeats: heartbeats.jws {size1 / 1e6:,.0f} MB, "
              f"export {t1:.1f} s, peak RSS {rss1 / 1e6:,.0f} MB")
        print(f"month of ~{4 * args.heartbeats:,} heartbeats: heartbeats.jws {size4 / 1e6:,.0f} MB, "
              f"export {t4:.1f} s, peak RSS {rss4 / 1e6:,.0f} MB")
        print(f"4x the month: heartbeats.jws x{size4 / size1:.1f}, peak RSS x{rss4 / rss1:.2f} "
              f"(goal: far below x4; peak RSS / heartbeats.jws {rss4 / size4:.2f}, was ~6.5)")
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
