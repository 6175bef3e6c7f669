"""A readable summary of a bundle as stored: per customer hours and amounts, chains, checkpoints."""

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from audit import bundle as B
from audit.archive import opened
from audit.checks import printable
from billing import adjustment_lines
from protocol.note import Checkpoint, NoteError, NoteVerifier, verify_checkpoint


def _read(root: Path, rel: str) -> bytes:
    """A file's bytes; a symlink, FIFO or device is refused unopened (see bundle.is_regular)."""
    if not B.is_regular(root, rel):
        raise OSError(f"{rel} is not a regular file")
    return B.read_document(root / rel)


def _json(root: Path, rel: str) -> Any:
    try:
        return json.loads(_read(root, rel).decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        return None


def _checkpoint_line(root: Path, rel: str) -> str:
    try:
        verifier = NoteVerifier.from_vkey(_read(root, B.COLLECTOR_PUB).decode("utf-8").strip())
        cp: Checkpoint = verify_checkpoint(_read(root, rel), verifier)
    except (OSError, NoteError, UnicodeDecodeError) as exc:
        return f"{rel}: does not verify ({exc})"
    return f"{rel}: origin {cp.origin}, size {cp.size}, root {cp.root.hex()} (signature ok)"


def _customers(usage: dict[str, Any], invoice: dict[str, Any], catalog: Any) -> list[str]:
    names = {c["id"]: c.get("name", "") for c in (catalog or {}).get("customers", []) if isinstance(c, dict)}
    hours: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for row in usage.get("rows", []):
        h = hours[row["customer"]]
        for k in ("active_hours", "payg_hours", "fixed_hours", "bridged_hours", "unknown_hours"):
            h[k] += int(row.get(k, 0))
    amounts: dict[str, list[str]] = defaultdict(list)
    for line in invoice.get("lines", []):
        amounts[line["customer"]].append(
            f"    {line['license']} {line['instance']} {line['bundle']}/{line['bandwidth_mbps']}Mbps/"
            f"{line['vservices']}vs: {line['quantity']} h x {line['price']} = {line['amount']}")
    for row in invoice.get("device_days", []):
        amounts[row["customer"]].append(
            f"    pack {row['pack']}: {row['device_days']} device-days = {row['months']} month(s) x "
            f"{row['price']} = {row['amount']}")
    cur = invoice.get("currency", "")
    out = []
    for cust in sorted(set(hours) | set(amounts) | set(invoice.get("totals", {}))):
        h = hours[cust]
        due = invoice.get("totals", {}).get(cust, "0.00")
        out.append(f"  {cust} {names.get(cust, '')}: total {due} {cur}"
                   f"  (active {h['active_hours']} h, payg {h['payg_hours']} h, fixed {h['fixed_hours']} h, "
                   f"bridged {h['bridged_hours']} h, unknown {h['unknown_hours']} h)")
        out += sorted(amounts[cust])
    for u in usage.get("unlicensed", []):
        out.append(f"  unlicensed {u['instance']}: {u['hours']} h (never priced)")
    flagged = [f"{r['license']}: {', '.join(r['flags'])}" for r in usage.get("rows", []) if r.get("flags")]
    if flagged:
        out.append("  flags: " + "; ".join(sorted(flagged)))
    out.append(f"  invoice total: {invoice.get('total')} {cur}")
    return out


def _chains(usage: dict[str, Any], agents: Any) -> list[str]:
    names = {a.get("kid"): a.get("name") for a in agents or [] if isinstance(a, dict)}
    out = []
    for c in usage.get("chains", []):
        gaps = ", ".join(f"{lo}..{hi}" for lo, hi in c["gaps"]) or "none"
        health = "ok" if not (c["gaps"] or c["forks"] or c["breaks"]) else "ATTENTION"
        out.append(f"  {names.get(c['agent'], '?')} ({c['agent']}): seq {c['first_seq']}..{c['last_seq']}, "
                   f"gaps {gaps}, forks {c['forks'] or 'none'}, breaks {c['breaks'] or 'none'}  [{health}]")
    return out


def summary(path: Path | str) -> str:
    """The summary text of the stored documents (run verify to check them)."""
    with opened(Path(path)) as root:
        text = _summary(root, Path(path))
    # The documents' own strings (customer and agent names) reach a terminal: no control characters.
    return "\n".join(printable(line) for line in text.split("\n"))


def _summary(root: Path, shown: Path) -> str:
    if not B.is_regular(root, B.MANIFEST):
        raise B.NotABundle(f"{root} holds no regular {B.MANIFEST}: not an audit bundle")
    manifest = _json(root, B.MANIFEST) or {}
    usage = _json(root, B.USAGE) or {}
    invoice = _json(root, B.INVOICE) or {}
    lines = B.count_jws_lines(root / B.HEARTBEATS) if B.is_regular(root, B.HEARTBEATS) else 0
    out = [f"bundle {shown}: provider {manifest.get('provider')}, month {manifest.get('month')}, "
           f"created {manifest.get('created')}",
           f"{lines} heartbeats; " + _checkpoint_line(root, B.CHECKPOINT), "", "customers:"]
    out += _customers(usage, invoice, _json(root, B.CATALOG))
    out += ["", "agent chains:", *_chains(usage, _json(root, B.AGENTS))]
    if B.is_regular(root, B.CLOSED_CHECKPOINT):
        frozen = _json(root, B.CLOSED_INVOICE) or {}
        out += ["", "month closed: " + _checkpoint_line(root, B.CLOSED_CHECKPOINT),
                f"  frozen total {frozen.get('total')}; current total {invoice.get('total')}"]
        try:
            adj = _as_list(adjustment_lines(invoice, frozen, manifest.get("month") or ""))
        except (KeyError, TypeError, ValueError) as exc:
            adj = []
            out.append(f"  adjustments: cannot compute ({exc})")
        for a in adj:
            out.append(f"  adjustment {a.get('customer')} {a.get('license', a.get('pack'))}: "
                       f"quantity {a.get('quantity', a.get('device_days'))}, amount {a.get('amount')}")
        if not adj:
            out.append("  no adjustment: late heartbeats changed nothing billable")
    return "\n".join(out) + "\n"


def _as_list(adj: Any) -> list[dict[str, Any]]:
    if isinstance(adj, dict):
        return list(adj.get("lines", [])) + list(adj.get("device_days", []))
    return list(adj or [])

