"""The verifier's individual checks: findings, agents, chains, billing recomputation."""

import math
from collections import defaultdict
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal, DecimalException
from pathlib import Path
from typing import Any

from audit import bundle as B
from audit.recompute import describe_diff, to_json_doc
from billing import Activity, CatalogError, compute, load_catalog, same_invoice, same_usage
from protocol.chain import ChainAnalysis
from protocol.errors import ProtocolError
from protocol.heartbeat import Heartbeat
from protocol.keys import kid_of, load_public_key_b64, raw_public
from protocol.strictjson import loads_strict
from protocol.timefmt import rfc3339_instant

Add = Callable[..., None]


@dataclass(frozen=True)
class Finding:
    file: str
    line: int | None
    rule: str
    message: str
    severity: str = "error"  # "error" fails verification; "finding" (gaps, forks) does not

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        # Messages quote the bundle's own text (agent names, kids, file names): a terminal control
        # sequence there could erase or hide the failures printed before it.
        return printable(f"{where}: {self.rule}: {self.message}")

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "rule": self.rule, "message": self.message,
                "severity": self.severity}


def printable(text: str) -> str:
    """``text`` with every character Python does not print as itself escaped (\\xNN, \\uNNNN,
    \\UNNNNNNNN), the space kept: control characters could erase the failures above a line, and
    format characters (U+202E, U+2066, the invisible tags) and separators (U+2028) reorder, hide or
    split it in a terminal (reviews)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def _escape(c: str) -> str:
    n = ord(c)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"


@dataclass
class Report:
    path: str
    provider: str = ""
    month: str = ""
    lines: int = 0
    checkpoint: dict[str, Any] | None = None
    chains: list[dict[str, Any]] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def notes(self) -> list[Finding]:
        return [f for f in self.findings if f.severity != "error"]

    def to_json(self) -> dict[str, Any]:
        return {"bundle": self.path, "ok": self.ok, "provider": self.provider, "month": self.month,
                "lines": self.lines, "checkpoint": self.checkpoint, "chains": self.chains,
                "findings": [f.to_json() for f in self.findings], "unsigned": dict(UNSIGNED)}


# What a verdict takes as given: signed by no one in v1 (heartbeat-v1.md §6 signs the log), so
# whoever hands the bundle over may have changed it; said with every verdict (an auditor's review)
UNSIGNED = (
    ("agents.json", "which keys count and their enrolment windows"),
    ("catalog.json", "customers, licenses and prices"),
    ("anchors.jws", "which heartbeat of the month before anchors each key (each is signed)"),
    ("manifest.json", "which files and checkpoint make up the bundle"),
)


@dataclass(frozen=True)
class AgentInfo:
    public_key: str
    name: str
    enrolled_at: int
    revoked_at: int | None


# A weak key (protocol.keys.check_public_raw) is named as such: its heartbeats prove nothing.
_AGENT_RULES = {"key.weak": "agents.weak_key"}


def load_agents(add: Add, rows: Any) -> dict[str, AgentInfo]:
    """agents.json: every key's kid must be the kid of its public key (a swapped key shows here)."""
    out: dict[str, AgentInfo] = {}
    if rows is None:
        return out
    if not isinstance(rows, list):
        add(B.AGENTS, None, "agents.format", "agents.json must be an array")
        return out
    for i, row in enumerate(rows):
        where = f"entry {i}"
        try:
            # heartbeat-v1.md §6 names these members and no others, nor forbids others: a
            # collector's extra member (a platform, a note) is ignored, not the key refused
            if not isinstance(row, dict) or not set(B.AGENT_MEMBERS) <= set(row):
                raise ProtocolError("agents.format", f"members must include {list(B.AGENT_MEMBERS)}")
            kid = row["kid"]
            where = f"entry {i} (kid {kid})"
            if kid_of(raw_public(load_public_key_b64(row["public_key"]))) != kid:
                raise ProtocolError("agents.kid", "kid is not the kid of public_key")
            if kid in out:
                raise ProtocolError("agents.duplicate", "kid listed twice")
            # Any RFC 3339 time (§6 fixes no form, unlike a heartbeat's `time`): the window is
            # taken in whole seconds inside it, as a heartbeat's time is one
            # (each parsed once: the window's start rounds up, its end down, and the order is exact)
            start = rfc3339_instant(row["enrolled_at"], "agents.format")
            end = None if row["revoked_at"] is None else rfc3339_instant(row["revoked_at"], "agents.format")
            if end is not None and end <= start:
                raise ProtocolError("agents.format", "revoked_at is not after enrolled_at")
            enrolled, revoked = math.ceil(start), None if end is None else math.floor(end)
            if not isinstance(row["name"], str):
                raise ProtocolError("agents.format", "name must be a string")
            out[kid] = AgentInfo(row["public_key"], row["name"], enrolled, revoked)
        except ProtocolError as exc:
            rule = exc.rule if exc.rule.startswith("agents.") else _AGENT_RULES.get(exc.rule, "agents.format")
            add(B.AGENTS, None, rule, f"{where}: {exc.detail}")
    return out


def check_chains(add: Add, good: dict[int, Heartbeat], analysis: ChainAnalysis,
                 agents: dict[str, AgentInfo], anchored: Collection[str] = (),
                 month_start: int | None = None) -> list[dict[str, Any]]:
    """§3 chain rules over the verified lines (``analysis`` of ``good`` with the anchors of the
    keys in ``anchored``): gaps, forks, breaks and clock alerts are findings; so is a key that
    begins the month (from ``month_start``) past seq 1 with no anchor."""
    where: dict[tuple[str, int], list[int]] = defaultdict(list)
    for i, hb in good.items():
        where[(hb.kid, hb.seq)].append(i + 1)
    chains = []
    for kid, rep in sorted(analysis.reports.items()):
        name = agents[kid].name if kid in agents else kid
        if month_start is not None and rep.first_seq > 1 and kid not in anchored and kid in agents:
            # anchors.jws is signed by nothing in v1: emptied, a break at the month's boundary
            # goes unseen (README, "What exit 0 does not prove"). An agent silent all of last
            # month has no anchor honestly, so this is a finding, not a failure. agents.json's
            # enrolled_at is signed by nothing either: a key "enrolled this month" that does not
            # begin at seq 1 (heartbeat-v1.md §2) is named too, or moving the date hid the break.
            why = ("it is enrolled this month by agents.json (signed by nothing), yet a key's first "
                   "heartbeat is seq 1: its earlier ones were refused before its enrolment, or the "
                   "anchor was removed and enrolled_at moved" if agents[kid].enrolled_at >= month_start
                   else "the key was silent all of it, or the anchor was removed")
            add(B.ANCHORS, None, "chain.unanchored",
                f"{name} ({kid}): the month begins at seq {rep.first_seq} with no heartbeat of the month "
                f"before in anchors.jws ({why})", "finding")
        for lo, hi in rep.gaps:
            # Between the anchor and the month's first heartbeat: an earlier heartbeat of the month
            # before given as the anchor (signed by its agent, but not the last) reads as this gap
            # where the last one would show a break.
            edge = (" at the month's boundary: check that the anchor is the key's last heartbeat of the "
                    "month before (its bundle), since anchors.jws is signed by nothing"
                    if kid in anchored and hi < rep.first_seq else "")
            add(B.HEARTBEATS, None, "chain.gap", f"{name} ({kid}): seq {lo}..{hi} missing{edge}", "finding")
        for s in rep.forks:
            lines = where[(kid, s)]
            add(B.HEARTBEATS, lines[0], "chain.fork",
                f"{name} ({kid}): seq {s} signed {len(lines)} times (lines {lines}); all quarantined",
                "finding")
        for s in rep.breaks:
            add(B.HEARTBEATS, where[(kid, s)][0], "chain.break",
                f"{name} ({kid}): seq {s} prev is not the hash of seq {s - 1}; quarantined", "finding")
        for s in rep.clock_back:
            add(B.HEARTBEATS, where[(kid, s)][0], "chain.clock",
                f"{name} ({kid}): seq {s} time is before its predecessor's", "finding")
        chains.append({**rep.to_json(), "name": name, "clock_back": rep.clock_back})
    return chains


def _load_doc(add: Add, root: Path, rel: str, present: set[str], prefix: str) -> dict[str, Any] | None:
    """A stored billing document, or None (reported) when absent, not JSON or not an object.

    ``present`` holds only regular files (audit.manifest): a FIFO or symlink is never opened."""
    if rel not in present:
        return None
    try:
        doc = loads_strict(B.read_document(root / rel), "json.format")  # duplicate names refused
    except OSError as exc:
        add(rel, None, "file.unreadable", str(exc))
        return None
    except ProtocolError as exc:
        add(rel, None, "json.format", f"not valid UTF-8 JSON: {exc.detail}")
        return None
    if not isinstance(doc, dict):
        add(rel, None, f"{prefix}.format", "not a JSON object")
        return None
    return doc


def _money(value: Any) -> Decimal:
    """billing-v1.md: "All money is decimal ... and travels as strings in JSON"."""
    return _number(value, str)


def _number(value: Any, kind: type[str] | type[int]) -> Decimal:
    """``value`` as a Decimal when its JSON type is ``kind`` (str for money, int for a quantity).

    Decimal() alone took a JSON array as a (sign, digits, exponent) tuple: [0,[5,4,0],-2] read as
    5.40, and [] raised ValueError past the checks."""
    if type(value) is not kind:
        raise TypeError(f"{value!r} is not a JSON {'string' if kind is str else 'integer'}")
    return Decimal(value)


def check_invoice_arithmetic(add: Add, rel: str, invoice: Any) -> None:
    """Each amount is quantity x price rounded half up; totals sum the lines and device-day rows."""
    cent = Decimal("0.01")
    try:
        totals: dict[str, Decimal] = defaultdict(Decimal)
        for n, line in enumerate(invoice["lines"], 1):
            want = (_number(line["quantity"], int) * _money(line["price"])).quantize(cent, ROUND_HALF_UP)
            if _money(line["amount"]) != want:
                add(rel, None, "invoice.arithmetic",
                    f"lines[{n - 1}] ({line['license']}): amount {line['amount']} is not "
                    f"{line['quantity']} x {line['price']} = {want}")
            totals[line["customer"]] += _money(line["amount"])
        for row in invoice["device_days"]:
            totals[row["customer"]] += _money(row["amount"])
        for cust, total in sorted(totals.items()):
            stored = invoice["totals"].get(cust)
            if stored is None or _money(stored) != total:
                add(rel, None, "invoice.arithmetic", f"totals[{cust}] is {stored}, its rows sum to {total}")
        if _money(invoice["total"]) != sum(totals.values(), Decimal(0)):
            add(rel, None, "invoice.arithmetic", f"total {invoice['total']} is not the sum of the rows")
    except (KeyError, TypeError, AttributeError, DecimalException) as exc:
        # DecimalException, not only InvalidOperation: an amount of "1E+1000000" parses, then
        # overflows the sum (decimal.Overflow), and the whole report was lost to a traceback
        add(rel, None, "invoice.format", f"not an invoice of billing-v1.md §7: {exc!r}")


def compare_billing(add: Add, root: Path, evidence: Callable[[], tuple[Activity, list[dict[str, Any]]]],
                    catalog: Any, month: str, usage_rel: str, invoice_rel: str, prefix: str,
                    present: set[str]) -> None:
    """Recompute billing-v1.md over catalog.json and ``evidence()`` (the verified lines' activity and
    chains, quarantine applied); the stored documents must equal it."""
    stored_u = _load_doc(add, root, usage_rel, present, prefix)
    stored_i = _load_doc(add, root, invoice_rel, present, prefix)
    if stored_i is not None:
        check_invoice_arithmetic(add, invoice_rel, stored_i)
    if catalog is None:
        return
    try:
        cat = load_catalog(catalog)
        activity, chains = evidence()
        result = compute(activity, cat, month, chains)
        usage, invoice = to_json_doc(result.usage), to_json_doc(result.invoice)
    except CatalogError as exc:
        add(B.CATALOG, None, "catalog.invalid", str(exc))
        return
    except ValueError as exc:
        add(invoice_rel, None, f"{prefix}.error", f"billing-v1.md gives no invoice: {exc}")
        return
    src = "recomputed from heartbeats.jws" + (" (first s lines)" if prefix == "closed" else "")
    if stored_u is not None and not _same(same_usage, stored_u, usage):
        add(usage_rel, None, f"{prefix}.usage", f"differs from the usage {src}, anchors.jws and "
            f"catalog.json: " + "; ".join(describe_diff(stored_u, usage)))
    if stored_i is not None and not _same(same_invoice, stored_i, invoice):
        add(invoice_rel, None, f"{prefix}.invoice", f"differs from the invoice {src} and "
            f"catalog.json: " + "; ".join(describe_diff(stored_i, invoice)))


def _same(fn: Callable[[Any, Any], bool], stored: Any, computed: Any) -> bool:
    try:
        return bool(fn(stored, computed))
    except (KeyError, TypeError, ValueError, AttributeError):
        return False
