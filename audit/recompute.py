"""Recomputation shared by bundle writers and the verifier: log checkpoints and billing over lines."""

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from billing import bill, load_catalog
from protocol.heartbeat import Heartbeat, parse_unverified
from protocol.merkle import leaf_hash, root_hash
from protocol.note import Checkpoint, NoteSigner, sign_checkpoint


def log_root(leaves: Sequence[str]) -> bytes:
    """RFC 9162 root over the ASCII bytes of each compact JWS (heartbeat-v1.md §5)."""
    return root_hash([leaf_hash(t.encode("ascii")) for t in leaves])


def sign_log_checkpoint(signer: NoteSigner, origin: str, leaves: Sequence[str]) -> str:
    return sign_checkpoint(Checkpoint(origin, len(leaves), log_root(leaves)), signer)


def anchor_map(anchors: Iterable[Heartbeat]) -> dict[str, Heartbeat]:
    return {hb.kid: hb for hb in anchors}


def bill_heartbeats(
    heartbeats: Sequence[Heartbeat | str], anchors: Iterable[Heartbeat], catalog: Mapping[str, Any],
    month: str,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """billing-v1.md over verified heartbeats (or their lines): (usage, invoice) as JSON documents."""
    result = bill(list(heartbeats), load_catalog(catalog), month, anchors=anchor_map(anchors))
    return to_json_doc(result.usage), to_json_doc(result.invoice)


def bill_lines(
    leaves: Sequence[str], anchors: Sequence[str], catalog: Mapping[str, Any], month: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Billing over JWS lines the caller trusts (a collector's own log, a simulation)."""
    return bill_heartbeats(list(leaves), [parse_unverified(t) for t in anchors], catalog, month)


def to_json_doc(doc: Any) -> dict[str, Any]:
    """A billing document as the JSON it is written as (round-trip: Decimals are already strings)."""
    if hasattr(doc, "to_json"):
        doc = doc.to_json()
    return json.loads(json.dumps(doc))


def _canon(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def set_diff(found: Sequence[Any], expected: Sequence[Any]) -> tuple[list[Any], list[Any]]:
    """Members of ``found`` not in ``expected`` and the reverse, as multisets of JSON values."""
    a = Counter(_canon(x) for x in found)
    b = Counter(_canon(x) for x in expected)
    extra = [json.loads(k) for k in sorted((a - b).elements())]
    missing = [json.loads(k) for k in sorted((b - a).elements())]
    return extra, missing


def describe_diff(found: Mapping[str, Any], expected: Mapping[str, Any], limit: int = 3) -> list[str]:
    """Human diagnostics of where a stored billing document differs from the recomputation."""
    out: list[str] = []
    for key in sorted(set(found) | set(expected)):
        f, e = found.get(key), expected.get(key)
        if isinstance(f, list) and isinstance(e, list):
            extra, missing = set_diff(f, e)
            out += [f"{key}: stored but not recomputed: {_canon(x)}" for x in extra[:limit]]
            out += [f"{key}: recomputed but not stored: {_canon(x)}" for x in missing[:limit]]
            more = len(extra) + len(missing) - min(limit, len(extra)) - min(limit, len(missing))
            if more > 0:
                out.append(f"{key}: {more} more differing entries")
        elif _canon(f) != _canon(e):
            out.append(f"{key}: stored {_canon(f)}, recomputed {_canon(e)}")
    return out
