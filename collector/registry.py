"""Providers and their catalogs (desired state + history); keys and tokens are in credentials.py."""

import hashlib
import json
import re
import time
import unicodedata
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml
from sqlalchemy.engine import Connection

from collector import schema as s
from collector.catalogdiff import billed_past, changes

ROLES = ("admin", "viewer", "auditor", "appliance")


class RegistryError(Exception):
    """A command or request that the registry refuses, with a message for the operator."""


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


class _CatalogYaml(yaml.SafeLoader):
    """YAML as the same catalog as JSON (billing-v1.md §7): a plain scalar is a number, a boolean
    or null only where JSON would write it so, and stays text otherwise, for the catalog's own
    check to judge. PyYAML's YAML 1.1 resolvers read `2026-11-03 12:00:00` (no zone) as the
    host's local time, `0500` as octal 320 (a 400 Mbps capacity priced at the 1000 Mbps rate),
    `1:30` as 90 and `on` as true, where the same texts in JSON are refused."""


_YAML = "tag:yaml.org,2002:"
_REPLACED = {f"{_YAML}{t}" for t in ("timestamp", "int", "float", "bool")}
_CatalogYaml.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in _REPLACED]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
# JSON's number and literal grammar (RFC 8259 §6-7), int before float: resolvers are tried in order
_CatalogYaml.add_implicit_resolver(f"{_YAML}bool", re.compile(r"^(?:true|false)$"), list("tf"))
_CatalogYaml.add_implicit_resolver(f"{_YAML}int", re.compile(r"^-?(?:0|[1-9][0-9]*)$"), list("-0123456789"))
_JSON_FLOAT = re.compile(r"^-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?$")
_CatalogYaml.add_implicit_resolver(f"{_YAML}float", _JSON_FLOAT, list("-0123456789"))


def read_catalog_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise RegistryError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    yml = path.suffix.lower() in (".yaml", ".yml")
    try:
        doc = yaml.load(text, Loader=_CatalogYaml) if yml else json.loads(text)
    except json.JSONDecodeError as exc:
        raise RegistryError(f"{path}:{exc.lineno}:{exc.colno}: not JSON: {exc.msg}") from exc
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f":{where.line + 1}:{where.column + 1}" if where is not None else ""
        raise RegistryError(f"{path}{at}: not YAML: {getattr(exc, 'problem', None) or exc}") from exc
    if not isinstance(doc, dict):
        raise RegistryError(f"{path}: a catalog is an object")
    return doc


def check_provider_id(pid: str) -> None:
    """A provider id goes into its logs' origin, `<collector origin>/<provider id>/<YYYY-MM>`
    (heartbeat-v1.md §5: one line of a signed note), and into URL paths: a new one must be
    non-empty, without whitespace, control or other non-printing characters, or '/'."""
    bad = [ch for ch in pid if ch.isspace() or ch == "/" or is_control(ch)]
    if not pid or bad:
        raise RegistryError(
            f"provider id {pid!r}: " + ("empty" if not pid else f"holds {bad[0]!r}")
            + "; use letters, digits and punctuation other than '/'"
        )


def is_control(ch: str) -> bool:
    return unicodedata.category(ch).startswith("C")  # control, format, surrogate, unassigned


def require_known_provider(conn: Connection, provider: str) -> None:
    """A token or user for a provider the collector does not know is a typo (acmee, ACME), not a
    new tenant: it made one, empty, whose agents' heartbeats nobody billed."""
    known = list(conn.execute(sa.select(s.providers.c.id).order_by(s.providers.c.id)).scalars())
    if provider not in known:
        raise RegistryError(
            f"no provider {provider!r} (known: {', '.join(known) or 'none'}): apply its catalog first "
            "(tr7-collector apply FILE) or add an agent for it (agent add)"
        )


def ensure_provider(conn: Connection, pid: str, name: str | None = None, currency: str | None = None) -> None:
    if not pid or any(map(is_control, pid)):
        check_provider_id(pid)  # before any query (PostgreSQL refuses a NUL in text): it raises
    row = conn.execute(sa.select(s.providers).where(s.providers.c.id == pid)).first()
    if row is None:
        check_provider_id(pid)  # only new ones: an existing provider keeps working as it is
        conn.execute(
            s.providers.insert().values(id=pid, name=name, currency=currency, created_at=int(time.time()))
        )
    elif name is not None and (row.name, row.currency) != (name, currency):
        conn.execute(s.providers.update().where(s.providers.c.id == pid).values(name=name, currency=currency))


def latest_catalog(conn: Connection, provider: str) -> tuple[int, dict[str, Any]] | None:
    row = conn.execute(
        sa.select(s.catalogs.c.id, s.catalogs.c.doc)
        .where(s.catalogs.c.provider == provider)
        .order_by(s.catalogs.c.id.desc())
        .limit(1)
    ).first()
    return None if row is None else (int(row.id), json.loads(row.doc))


def catalog_by_id(conn: Connection, cid: int) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(
        conn.execute(sa.select(s.catalogs.c.doc).where(s.catalogs.c.id == cid)).scalar_one())
    return doc


class RetroactiveChange(RegistryError):
    """Applying the catalog would reprice hours already billed in an open month (refused)."""

    def __init__(self, provider: str, changes: list[Any]) -> None:
        self.provider, self.changes = provider, changes
        retro = [c for c in changes if c.retroactive]
        months = sorted({m for c in retro for m in c.months})
        super().__init__(
            f"provider {provider}: {len(retro)} change(s) would reprice hours already billed in "
            f"open month(s) {', '.join(months)}; nothing stored. To change something from now on, "
            "keep the past as it is: append a capacity entry from the next whole hour or later, "
            "end a license and start a new one from then, leave rates, policy, bundles and "
            "currency alone until the month is closed. To correct the billed history on purpose, "
            "apply again with --retroactive"
        )


def apply_catalog(
    conn: Connection, doc: dict[str, Any], *, retroactive: bool = False, now: int | None = None
) -> tuple[str, list[str]]:
    """Validate ``doc`` (billing.load_catalog names the failing field) and make it the desired state.

    Returns the provider and one line per change. A change that alters the billing facts in force
    at an instant already billed in an open month (collector.catalogdiff) raises
    RetroactiveChange, storing nothing, unless ``retroactive`` says it is a deliberate correction;
    the stored version then records it. The first catalog of a provider is never retroactive.
    """
    from billing import load_catalog

    load_catalog(doc)  # raises billing.CatalogError
    pid = doc["provider"]["id"]
    now = int(time.time()) if now is None else now
    prev = latest_catalog(conn, pid)
    _same_currency(conn, pid, prev[1] if prev else None, doc)
    if prev is None:
        found = changes(None, doc)
    else:
        from collector.accounts.store import overlay  # billing reads the catalog through it

        found = changes(prev[1], doc, billed_past(conn, pid, now), lambda d: overlay(conn, pid, d))
    is_retro = any(c.retroactive for c in found)
    if is_retro and not retroactive:
        raise RetroactiveChange(pid, found)
    ensure_provider(conn, pid, doc["provider"].get("name"), doc["provider"].get("currency"))
    if prev is None or prev[1] != doc:
        text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
        conn.execute(
            s.catalogs.insert().values(
                provider=pid, applied_at=now, digest=digest(text), doc=text, retroactive=is_retro
            )
        )
    return pid, [str(c) for c in found]


def _same_currency(conn: Connection, pid: str, prev: dict[str, Any] | None, doc: dict[str, Any]) -> None:
    """A provider keeps its currency once a month is closed: the late heartbeats of a closed month
    are billed as adjustment lines, priced as it was, on the next open month's invoice, which has
    one currency (billing-v1.md §7). A catalog in another currency made an invoice in USD add up
    a line priced in EUR."""
    was, now = (prev or {}).get("provider", {}).get("currency"), doc["provider"].get("currency")
    if prev is None or was == now:
        return
    closed = conn.execute(sa.select(s.closes.c.month).where(s.closes.c.provider == pid)
                          .order_by(s.closes.c.month.desc()).limit(1)).scalar()
    if closed is not None:
        raise RegistryError(
            f"provider {pid}'s currency is {was}, and {closed} is closed in it: the late heartbeats of "
            f"its closed months are billed as adjustment lines on the next open month's invoice, which "
            f"has one currency (billing-v1.md §7). Keep currency {was}, or bill in {now} under a new "
            "provider id")


# --- agents --------------------------------------------------------------------------------
