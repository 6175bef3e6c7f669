"""The web pages' own tables: user accounts (scrypt hashes) and server-side sessions."""

import sqlalchemy as sa

from collector.schema import metadata

web_users = sa.Table(
    "web_users",
    metadata,
    sa.Column("username", sa.String, primary_key=True),
    sa.Column("provider", sa.String),  # NULL = the vendor
    sa.Column("role", sa.String, nullable=False),
    sa.Column("password", sa.String, nullable=False),  # scrypt$n$r$p$salt$hash
    sa.Column("created_at", sa.BigInteger, nullable=False),
)

# Sessions live in the database so that every worker process knows them; only digests are stored.
web_sessions = sa.Table(
    "web_sessions",
    metadata,
    sa.Column("digest", sa.String(64), primary_key=True),
    sa.Column("provider", sa.String),
    sa.Column("role", sa.String, nullable=False),
    sa.Column("who", sa.String, nullable=False),  # username, or "token …" + a digest prefix
    sa.Column("csrf", sa.String, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("expires_at", sa.BigInteger, nullable=False),
)

TABLES = (web_users, web_sessions)
