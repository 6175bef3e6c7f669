"""Cyclic-GC settings of every collector process (server workers and `tr7-collector` commands)."""

import gc


def tune_gc() -> None:
    """Fewer, cheaper cyclic-GC passes (docs/performance.md, "Verification and ingest performance").

    The collector's work makes and frees objects by the hundred thousand (a batch of 500 heartbeats
    decodes ~75,000 dicts; a month's bill reads ~200,000 rows), nearly all freed by reference
    counting. With the default thresholds they trigger gen-2 passes over every object of FastAPI,
    SQLAlchemy and pydantic as well: ~80 us per ingested heartbeat, and a third of a full
    recomputation's time. Objects made at start-up are frozen out of collection, and a pass runs
    after 50,000 net container allocations instead of 700: cycles are still collected, later.
    Called once per process, so every path (ingest, bill, export, full recomputation) runs under
    the same policy, and the benchmarks compare them under it.
    """
    gc.freeze()
    gc.set_threshold(50_000, 20, 10)
