"""Sign-in (user accounts or API tokens), server-side sessions, CSRF tokens and role checks."""

import base64
import functools
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

import sqlalchemy as sa
from fastapi import HTTPException, Request
from sqlalchemy.engine import Connection

from collector import db, registry, roles
from collector import schema as s
from collector.readapi import Scope
from collector.web.tables import web_sessions, web_users

COOKIE = "tr7_session"
LOGIN_COOKIE = "tr7_login_csrf"  # double-submit token for the sign-in form, before any session
SESSION_TTL = 12 * 3600
ROLES = tuple(r for r in roles.ROLES if r != "appliance")  # a web user's; an appliance's is a token
_N, _R, _P = 2**14, 8, 1  # scrypt cost: about 16 MiB and tens of milliseconds per check


class LoginRequired(Exception):
    """No valid session: the page handler redirects to the sign-in form. ``ended``: the browser
    sent a session that is over (expired, signed out elsewhere, its token revoked)."""

    def __init__(self, ended: bool = False) -> None:
        super().__init__("sign in first")
        self.ended = ended


@dataclass(frozen=True)
class WebSession:
    scope: Scope
    who: str
    csrf: str

    def require(self, permission: str) -> None:
        """The role -> permission table of collector/roles.py, as for bearer tokens."""
        self.scope.require(permission)


def hash_password(password: str, salt: bytes | None = None, n: int = _N, r: int = _R, p: int = _P) -> str:
    salt = salt or secrets.token_bytes(16)
    dk = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=32, maxmem=64 * 1024 * 1024)
    b64 = base64.b64encode
    return f"scrypt${n}${r}${p}${b64(salt).decode()}${b64(dk).decode()}"


def check_password(password: str, stored: str) -> bool:
    try:
        _alg, n, r, p, salt, _dk = stored.split("$")
        again = hash_password(password, base64.b64decode(salt), int(n), int(r), int(p))
    except ValueError:
        return False
    return hmac.compare_digest(again, stored)


@functools.cache
def _equaliser() -> str:
    # Made once: hashing it at each unknown name cost a second scrypt, so an unknown name took
    # twice as long to answer as a known one (a way to tell which names exist).
    return hash_password("timing-equaliser")


def add_user(
    conn: Connection, provider: str | None, role: str, username: str, password: str, now: int
) -> None:
    if role not in ROLES:
        raise registry.RegistryError(f"role must be one of {', '.join(ROLES)}")
    if (role == "vendor") != (provider is None):
        raise registry.RegistryError("the vendor role has no provider; every other role needs one")
    _check_length(password)
    if provider is not None:
        registry.require_known_provider(conn, provider)
    if conn.execute(sa.select(web_users.c.username).where(web_users.c.username == username)).first():
        raise registry.RegistryError(f"user {username} exists")
    conn.execute(
        web_users.insert().values(
            username=username, provider=provider, role=role, password=hash_password(password), created_at=now
        )
    )


def _check_length(password: str) -> None:
    if len(password) < 8:
        raise registry.RegistryError("a password has at least 8 characters")


def _ending_sessions_of(conn: Connection, username: str) -> int:
    """A user's sessions ended (a new password, a removed account): how many there were."""
    done = conn.execute(web_sessions.delete().where(web_sessions.c.who == username))
    return int(done.rowcount or 0)


def _require_user(conn: Connection, username: str) -> None:
    if conn.execute(sa.select(web_users.c.username).where(web_users.c.username == username)).first() is None:
        raise registry.RegistryError(f"no user {username} (tr7-collector user list)")


def set_password(conn: Connection, username: str, password: str) -> int:
    """A new password; the user's open sessions end (someone who had the old one may hold one)."""
    _check_length(password)
    _require_user(conn, username)
    conn.execute(web_users.update().where(web_users.c.username == username)
                 .values(password=hash_password(password)))
    return _ending_sessions_of(conn, username)


def remove_user(conn: Connection, username: str) -> int:
    """Delete an account and end its sessions (a departed or compromised user)."""
    _require_user(conn, username)
    conn.execute(web_users.delete().where(web_users.c.username == username))
    return _ending_sessions_of(conn, username)


def authenticate(conn: Connection, username: str, password: str, token: str) -> tuple[Scope, str] | None:
    """(scope, who) for valid credentials: a user name and password, or an API token."""
    if token.strip():
        if "\x00" in token:
            return None
        row = conn.execute(
            sa.select(s.api_tokens).where(s.api_tokens.c.digest == registry.digest(token.strip()))
        ).first()
        if row is None:
            return None
        return Scope(row.provider, row.role), f"token {row.digest[:TOKEN_WHO]}"
    # No user name holds a NUL, and PostgreSQL's text cannot even be compared with one.
    row = None if "\x00" in username else conn.execute(
        sa.select(web_users).where(web_users.c.username == username)
    ).first()
    if row is None:
        check_password(password, _equaliser())  # one scrypt, as for a known name's wrong password
        return None
    if not check_password(password, row.password):
        return None
    return Scope(row.provider, row.role), row.username


TOKEN_WHO = 8  # hex digits of the token's digest a session opened with it records as its `who`


def end_sessions_of_token(conn: Connection, token_digest: str) -> int:
    """End the web sessions opened with a token (its revocation): how many there were."""
    who = f"token {token_digest[:TOKEN_WHO]}"
    done = conn.execute(web_sessions.delete().where(web_sessions.c.who == who))
    return int(done.rowcount or 0)


def open_session(conn: Connection, scope: Scope, who: str, now: int) -> str:
    sid = secrets.token_urlsafe(32)
    conn.execute(web_sessions.delete().where(web_sessions.c.expires_at < now))
    conn.execute(
        web_sessions.insert().values(
            digest=registry.digest(sid),
            provider=scope.provider,
            role=scope.role,
            who=who,
            csrf=secrets.token_urlsafe(24),
            created_at=now,
            expires_at=now + SESSION_TTL,
        )
    )
    return sid


def close_session(conn: Connection, sid: str) -> None:
    conn.execute(web_sessions.delete().where(web_sessions.c.digest == registry.digest(sid)))


def current(request: Request) -> WebSession:
    """The session of the request (dependency of every page); no session: sign in first."""
    sid = request.cookies.get(COOKIE)
    if not sid:
        raise LoginRequired()
    with db.read_conn(request.app.state.engine) as c:
        row = c.execute(sa.select(web_sessions).where(web_sessions.c.digest == registry.digest(sid))).first()
    if row is None or row.expires_at <= int(time.time()):
        raise LoginRequired(ended=True)
    return WebSession(Scope(row.provider, row.role), row.who, row.csrf)


def check_csrf(expected: str, given: str | None) -> None:
    """Every form POST carries the session's token; a cross-site form cannot read it."""
    if not given or not hmac.compare_digest(expected.encode(), given.encode()):
        raise HTTPException(403, "missing or wrong CSRF token")


def secure(request: Request) -> bool:
    return request.url.scheme == "https"
