"""A rejected line's answer (its rule, its seq) and the per-provider, per-rule count of rejections."""

import base64
import json
import logging
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy.engine import Engine

from collector.aggregates import upsert
from collector.db import write_tx
from protocol.errors import ProtocolError

log = logging.getLogger("collector.ingest")  # the lines keep the logger they always had


def count_rejections(
    engine: Engine, results: Sequence[dict[str, Any]], parsed: Mapping[int, tuple[Any, ...]],
    named: Mapping[int, str], providers: Mapping[str, str], now: int,
) -> None:
    """Add the batch's rejected lines to `rejections`, by provider ('' without an enrolled key)
    and rule: a line whose header names an enrolled key counts for its provider, its payload
    parsed or not (a bad payload of the provider's own agent showed on the vendor's scrape only).
    After the batch's own commit, and never failing it: the lines' answers stand whether or not
    their count is kept (it is logged then)."""
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for n, r in enumerate(results):
        if r["status"] == "rejected":
            kid = parsed[n][0].kid if n in parsed else named.get(n)
            counts[(providers.get(kid, "") if kid is not None else "", rule_of(r["reason"]))] += 1
    if not counts:
        return
    rows = [(p, rule, k, now) for (p, rule), k in sorted(counts.items())]  # sorted: the lock order
    try:
        write_tx(engine, lambda conn: upsert(conn, "rejections", rows))
    except Exception:  # the database failing now fails the next batch too, which reports it
        log.exception("event=rejections_not_counted rows=%r", rows)


_INDEX = re.compile(r"\[\d+\]")
MAX_REASON = 400  # characters of a rejection's reason; a detail may quote the line's own values


def rule_of(reason: str) -> str:
    """The rule a reason starts with, its array indexes dropped (`payload.observations[7].state` ->
    `payload.observations[].state`): a fixed set to count by, where one forged line with a new
    index each time made a new `rejections` row and a new /metrics series."""
    return _INDEX.sub("[]", reason.split(":", 1)[0])


def rejected(line: str, exc: ProtocolError) -> dict[str, Any]:
    """A rejection names the rule; it carries the line's `seq` when one can be read at all, since
    agents match answers to lines by seq (the member is left out rather than null). The reason is
    cut at MAX_REASON characters: a 4 MiB bad `time` was echoed whole, into the answer and the log."""
    reason = str(exc)
    if len(reason) > MAX_REASON:
        reason = reason[: MAX_REASON - 3] + "..."
    out: dict[str, Any] = {"status": "rejected", "reason": reason}
    try:
        part = line.split(".")[1]
        seq = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))).get("seq")
    except Exception:
        seq = None
    if type(seq) is int:
        out = {"seq": seq, **out}
    return out
