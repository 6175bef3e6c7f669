"""Agent keys, enrolment tokens and API tokens: who may send heartbeats, and who may read."""

import secrets
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from collector import schema as s
from collector.registry import ROLES, RegistryError, digest, ensure_provider, is_control
from protocol.errors import ProtocolError
from protocol.keys import kid_of, load_public_key_b64, raw_public
from protocol.timefmt import format_time

MAX_AGENT_NAME = 200


def check_agent_name(name: str) -> None:
    """An agent's name is shown on pages and written to every audit bundle's agents.json."""
    if not name.strip() or len(name) > MAX_AGENT_NAME or any(map(is_control, name)):
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
