"""The audit bundle of heartbeat-v1.md §6 for one (provider, month), via audit.bundle."""

from pathlib import Path

from sqlalchemy.engine import Connection

from audit.bundle import ClosedState, write_bundle
from collector import accounting, evidence, registry, tlog
from collector.settings import Settings


def export(
    conn: Connection, settings: Settings, provider: str, month: str, out: Path, overwrite: bool = False
) -> tuple[Path, bool]:
    """Write the bundle; returns (path, whether the aggregates agreed with the full recomputation)."""
    size = tlog.log_size(conn, provider, month)
    leaves = tlog.leaf_tokens(conn, provider, month, size)
    anchors = [r.jws for r in evidence.anchor_rows(conn, provider, month)]
    _cid, catalog = accounting.catalog_for(conn, provider, month)
    # The bundle's documents are the full recomputation over its own lines, without adjustments.
    usage, invoice = accounting.full_result(conn, provider, month, size, catalog)
    agrees = accounting.same_docs((usage, invoice), accounting.own_result(conn, provider, month))
    c = accounting.closed(conn, provider, month)
    closed_state = None if c is None else ClosedState(c.checkpoint, c.usage, c.invoice)
    path = write_bundle(
        out,
        provider=provider,
        month=month,
        leaves=leaves,
        anchors=anchors,
        checkpoint=tlog.checkpoint(conn, settings, provider, month, size),
        collector_vkey=tlog.signer(settings).verifier_key(),
        agents=[
            {k: a[k] for k in ("kid", "public_key", "name", "enrolled_at", "revoked_at")}
            for a in registry.list_agents(conn, provider)
        ],
        catalog=catalog,
        usage=usage,
        invoice=invoice,
        closed=closed_state,
        overwrite=overwrite,
    )
    return path, agrees
