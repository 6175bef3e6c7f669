"""Providers, catalogs (desired state + history), agent keys, enrolment and API tokens."""

import hashlib
import json
import re
import secrets
import time
import unicodedata
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml
from sqlalchemy.engine import Connection

from collector import schema as s
from collector.catalogdiff import billed_past, changes
from protocol.errors import ProtocolError
from protocol.keys import kid_of, load_public_key_b64, raw_public
from protocol.timefmt import format_time

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
    bad = [ch for ch in pid if ch.isspace() or ch == "/" or _control(ch)]
    if not pid or bad:
        raise RegistryError(
            f"provider id {pid!r}: " + ("empty" if not pid else f"holds {bad[0]!r}")
            + "; use letters, digits and punctuation other than '/'"
        )


def _control(ch: str) -> bool:
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
    if not pid or any(map(_control, pid)):
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
    return json.loads(conn.execute(sa.select(s.catalogs.c.doc).where(s.catalogs.c.id == cid)).scalar_one())


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


MAX_AGENT_NAME = 200


def check_agent_name(name: str) -> None:
    """An agent's name is shown on pages and written to every audit bundle's agents.json."""
    if not name.strip() or len(name) > MAX_AGENT_NAME or any(map(_control, name)):
        raise RegistryError(
            f"agent name {name[:40]!r}: 1 to {MAX_AGENT_NAME} characters, not all spaces, "
            "no control characters"
        )


def add_agent(
    conn: Connection, provider: str, name: str, public_key: str, enrolled_at: int, exact: bool = False
) -> str:
    """Enrol a key (idempotent: a key already enrolled for the provider is its kid). ``exact``: the
    caller named the enrolment time (`agent add --enrolled-at`), which an enrolled key keeps."""
    try:
        kid = kid_of(raw_public(load_public_key_b64(public_key)))
    except ProtocolError as exc:
        raise RegistryError(str(exc)) from exc
    check_agent_name(name)
    row = conn.execute(sa.select(s.agents).where(s.agents.c.kid == kid)).first()
    if row is not None:
        if row.provider != provider:
            raise RegistryError(f"key {kid} is already enrolled for provider {row.provider}")
        if exact and int(row.enrolled_at) != enrolled_at:
            # It answered with the kid and kept the old time: heartbeats signed before it stayed
            # rejected while the operator believed them backdated
            raise RegistryError(
                f"key {kid} is already enrolled, at {format_time(int(row.enrolled_at))}: an enrolment "
                f"time is never moved (the key's heartbeats were judged against it); enrol a new key")
        return kid
    ensure_provider(conn, provider)
    conn.execute(
        s.agents.insert().values(
            kid=kid, provider=provider, name=name, public_key=public_key.strip(), enrolled_at=enrolled_at
        )
    )
    return kid


def revoke_agent(conn: Connection, kid: str, at: int | None, now: int) -> int:
    """Revoke a key at ``at``, or (None) now, or just after its last logged heartbeat or its
    enrolment if that is later; returns the time it is revoked at.

    The default is not plain `now`: heartbeats may be timed up to 300 s ahead, so whoever holds a
    stolen key could keep one logged just ahead of now, and `revoke` at now was refused every time.
    The row is locked first (PostgreSQL): an ingest in flight re-reads it under FOR SHARE
    (collector/ingest.py), so either its lines are logged before this reads the log, or it sees
    this revocation and rejects what comes after it."""
    q = sa.select(s.agents).where(s.agents.c.kid == kid)
    if conn.dialect.name == "postgresql":
        q = q.with_for_update()
    row = conn.execute(q).first()
    if row is None:
        raise RegistryError(f"no agent with kid {kid}")
    # Not before what the key already has in the log: those heartbeats were accepted and billed,
    # and the audit bundle would then show them signed after the revocation (key.window), so the
    # collector's own export would fail `tr7-audit verify`.
    L = s.leaves.c
    latest_month = sa.select(sa.func.max(L.month)).where(L.kid == kid).scalar_subquery()
    latest = conn.execute(
        sa.select(sa.func.max(L.time)).where(L.kid == kid, L.month == latest_month)
    ).scalar()
    impossible = row.revoked_at is not None and int(row.revoked_at) <= int(row.enrolled_at)
    if at is None and impossible:
        at = int(row.enrolled_at) + 1  # the smallest window that is one (see below)
    elif at is None:
        # after the enrolment too: a key enrolled for a later time and revoked now would get a
        # window ending before it starts, which every bundle of the provider fails (agents.format)
        at = max(now, int(row.enrolled_at) + 1, -1 if latest is None else int(latest) + 1)
    elif at <= int(row.enrolled_at):
        raise RegistryError(
            f"key {kid} is enrolled at {format_time(int(row.enrolled_at))}: a revocation at "
            f"{format_time(at)} would end its window before it begins, which every audit bundle of the "
            f"provider rejects; revoke after it (without --at: at once, or just after the enrolment)")
    if row.revoked_at is not None and row.revoked_at <= at and not impossible:
        return int(row.revoked_at)  # an earlier revocation stands: never undone by a later date
    # A revocation at or before the enrolment (stored before that was refused) is the one moved:
    # its window is empty, so nothing was logged under it, and every bundle of the provider failed
    # verify on it; the key stays revoked, just after its enrolment.
    if latest is not None and at < latest:  # at it: still inside the window (§4, check_key_window)
        raise RegistryError(
            f"key {kid} has heartbeats logged up to {format_time(int(latest))}: a revocation at "
            f"{format_time(at)} would turn accepted, billed evidence into verify errors; revoke after "
            f"it (without --at: at once, or just after the last logged heartbeat)"
        )
    conn.execute(s.agents.update().where(s.agents.c.kid == kid).values(revoked_at=at))
    return at


def agent_json(row: Any) -> dict[str, Any]:
    return {
        "kid": row.kid,
        "provider": row.provider,
        "name": row.name,
        "public_key": row.public_key,
        "enrolled_at": format_time(row.enrolled_at),
        "revoked_at": None if row.revoked_at is None else format_time(row.revoked_at),
    }


def list_agents(conn: Connection, provider: str | None = None) -> list[dict[str, Any]]:
    q = sa.select(s.agents).order_by(s.agents.c.provider, s.agents.c.kid)
    if provider is not None:
        q = q.where(s.agents.c.provider == provider)
    return [agent_json(r) for r in conn.execute(q)]


def new_enroll_token(conn: Connection, provider: str, ttl: int, now: int) -> str:
    ensure_provider(conn, provider)
    token = "tr7e_" + secrets.token_urlsafe(32)
    conn.execute(
        s.enroll_tokens.insert().values(
            digest=digest(token), provider=provider, created_at=now, expires_at=now + ttl
        )
    )
    return token


def enroll(conn: Connection, token: str, name: str, public_key: str, now: int) -> dict[str, Any]:
    """Redeem a one-time token; the same key with the same token again gets the same answer."""
    if not token.isascii() or "\x00" in token:  # no token is (a lone surrogate cannot even be hashed)
        raise PermissionError("unknown enrolment token")
    q = sa.select(s.enroll_tokens).where(s.enroll_tokens.c.digest == digest(token))
    if not is_sqlite_conn(conn):
        q = q.with_for_update()
    row = conn.execute(q).first()
    if row is None:  # before the key: whoever holds no token learns nothing of what else is wrong
        raise PermissionError("unknown enrolment token")
    try:
        kid = kid_of(raw_public(load_public_key_b64(public_key)))
    except ProtocolError as exc:
        if row.used_at is not None:
            raise PermissionError("enrolment token already used") from None
        raise RegistryError(str(exc)) from exc
    if row.used_at is not None:
        if row.kid == kid:
            agent = conn.execute(sa.select(s.agents).where(s.agents.c.kid == kid)).first()
            if agent is not None:
                return {"kid": kid, "provider": agent.provider, "enrolled_at": format_time(agent.enrolled_at)}
        raise PermissionError("enrolment token already used")
    if now >= row.expires_at:
        raise PermissionError("enrolment token expired")
    existing = conn.execute(sa.select(s.agents).where(s.agents.c.kid == kid)).first()
    if existing is not None:
        raise PermissionError("this key is already enrolled")
    add_agent(conn, row.provider, name, public_key, now)
    conn.execute(
        s.enroll_tokens.update().where(s.enroll_tokens.c.digest == row.digest).values(used_at=now, kid=kid)
    )
    return {"kid": kid, "provider": row.provider, "enrolled_at": format_time(now)}


def is_sqlite_conn(conn: Connection) -> bool:
    return conn.engine.dialect.name == "sqlite"


def new_api_token(conn: Connection, provider: str | None, role: str, now: int) -> str:
    """A bearer token, shown once and stored hashed: a provider's (admin, viewer, auditor, appliance)
    or the vendor's."""
    if provider is None:
        if role != "vendor":
            raise RegistryError("a token without a provider is the vendor's (role vendor)")
    else:
        if role not in ROLES:
            raise RegistryError(f"role must be one of {', '.join(ROLES)}")
        ensure_provider(conn, provider)
    token = "tr7_" + secrets.token_urlsafe(32)
    conn.execute(
        s.api_tokens.insert().values(digest=digest(token), provider=provider, role=role, created_at=now)
    )
    return token


TOKEN_ID = 12  # hex digits of a token's digest that name it in `token list` and `token revoke`


def list_api_tokens(conn: Connection, provider: str | None = None) -> list[dict[str, Any]]:
    """The API tokens (never the tokens themselves: only their digests are stored)."""
    t = s.api_tokens.c
    q = sa.select(s.api_tokens).order_by(t.provider, t.created_at)
    if provider is not None:
        q = q.where(t.provider == provider)
    return [
        {"id": r.digest[:TOKEN_ID], "provider": r.provider, "role": r.role,
         "created_at": format_time(r.created_at)}
        for r in conn.execute(q)
    ]


def revoke_api_token(conn: Connection, ident: str) -> str:
    """Delete the one token whose digest starts with ``ident`` (as `token list` shows it); its digest."""
    ident = ident.strip().lower()
    if len(ident) < 8 or any(ch not in "0123456789abcdef" for ch in ident):
        raise RegistryError(f"token id {ident!r}: at least 8 hex digits, as `token list` shows them")
    t = s.api_tokens.c
    q = sa.select(t.digest).where(t.digest.startswith(ident, autoescape=True))
    found = list(conn.execute(q).scalars())
    if len(found) != 1:
        raise RegistryError(f"token id {ident!r} matches {len(found)} tokens: give more digits" if found
                            else f"no token with id {ident!r}")
    conn.execute(s.api_tokens.delete().where(t.digest == found[0]))
    return str(found[0])
