"""Progress of long work on stderr, shared by tr7-audit and tr7-collector's export."""

import sys
import time


class StderrProgress:
    """Progress on stderr for long files: one line per stage, rewritten at most twice a second."""

    def __init__(self, quiet: bool, unit: str = "lines") -> None:
        self.quiet, self.unit = quiet, unit
        self.last = 0.0
        self.stage = ""

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self.quiet or total < 5_000:
            return
        now = time.monotonic()
        if stage == self.stage and done < total and now - self.last < 0.5:
            return
        if stage != self.stage and self.stage:
            print(file=sys.stderr)
        self.stage, self.last = stage, now
        pct = 100 * done // total
        print(f"\r{stage}: {done}/{total} {self.unit} ({pct}%)", end="", file=sys.stderr, flush=True)
        if done >= total:
            print(file=sys.stderr)
            self.stage = ""
