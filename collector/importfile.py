"""`tr7-collector import`: an air-gapped agent's exported lines, with per-line results to carry back."""

import json
import os
import sys
from pathlib import Path
from typing import Any

from collector.ingest import ingest_lines
from protocol.heartbeat import token_digest

BATCH = 5000


def import_file(engine: Any, path: Path, results_path: Path | None) -> int:
    """Ingest ``path`` (a JWS a line, as `tr7-agent export` writes) as POST /v1/heartbeats would;
    print the counts, name each rejected line on stderr, and with ``results_path`` write every
    line's result for `tr7-agent settle`. Exit 0, or 2 when a line was rejected."""
    text = path.read_bytes().decode("ascii", errors="replace")  # non-ASCII lines get rejected
    numbered = [(n, ln.strip()) for n, ln in enumerate(text.splitlines(), 1) if ln.strip()]
    counts = {"accepted": 0, "duplicate": 0, "rejected": 0}
    results = []
    for i in range(0, len(numbered), BATCH):
        part = numbered[i : i + BATCH]
        for (n, line), r in zip(part, ingest_lines(engine, [ln for _n, ln in part]), strict=True):
            counts[r["status"]] += 1
            # the agent finds its spool's rows by the JWS's digest (what heartbeat-v1.md's prev holds)
            digest = token_digest(line) if line.isascii() else None  # a non-ASCII line: rejected
            results.append({"line": n, "digest": digest, **r})
            if r["status"] == "rejected":
                # the file's own line number; a line with no readable seq has none in its result
                print(f"line {n}: seq {r.get('seq')}: rejected: {r['reason']}", file=sys.stderr)
    if results_path is not None:
        tmp = results_path.with_name(results_path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in results), encoding="ascii")
        os.replace(tmp, results_path)  # whole or absent: the agent deletes what it says is stored
    print(json.dumps(counts))
    return 0 if counts["rejected"] == 0 else 2
