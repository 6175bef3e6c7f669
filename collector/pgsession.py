"""How long a PostgreSQL connection of the collector may wait on the other end, on both sides.

Found by a review: nothing bounded it. A host whose network path to PostgreSQL was cut in the
middle of an ingest kept its session "idle in transaction" on the server, holding the log's row
lock, and every host's ingest of that provider and month waited behind it until the kernel gave
up on the socket (~15 minutes of retransmissions); the host itself waited on its socket for as
long, with its ingest slots taken.

- The server ends a session that sits idle inside a transaction (the collector never pauses
  inside one for long: an export reads in chunks, a bill is computed between statements in
  seconds, an archive is packed after its snapshot) and probes an idle client's socket; a
  session's settings, set once per connection by SQL (PgBouncer refuses startup options; in its
  transaction pooling mode session settings do not follow a client: set them on the role),
  each left out when the URL's `options` sets it.
- libpq gives up connecting, probes the server's socket and bounds unacknowledged sends, unless
  the database URL names the parameter itself (`?keepalives_idle=60`).
"""

import logging
from typing import Any

import psycopg
from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url

log = logging.getLogger(__name__)
# Module values, not literals in the functions: tests shorten them.
IDLE_IN_TRANSACTION = "120s"
SERVER = {"tcp_keepalives_idle": "30", "tcp_keepalives_interval": "10", "tcp_keepalives_count": "3",
          "tcp_user_timeout": "60000"}
CLIENT = {"connect_timeout": "10", "keepalives": "1", "keepalives_idle": "30", "keepalives_interval": "10",
          "keepalives_count": "3", "tcp_user_timeout": "60000"}


def client_args(url: str) -> dict[str, Any]:
    """libpq's parameters for create_engine's connect_args: CLIENT's, less those the URL sets."""
    given = set(make_url(url).query)
    return {k: v for k, v in CLIENT.items() if k not in given}


def server_settings(url: str) -> dict[str, str]:
    """The session settings to make: SERVER's and the idle timeout, less those the URL's
    `options` sets itself (`?options=-c idle_in_transaction_session_timeout=0`), as libpq's."""
    options = make_url(url).query.get("options", ())
    given = " ".join((options,) if isinstance(options, str) else options)
    wanted = {"idle_in_transaction_session_timeout": IDLE_IN_TRANSACTION, **SERVER}
    return {k: v for k, v in wanted.items() if k not in given}


def bound_sessions(engine: Engine, url: str) -> None:
    """Set the server's side on each new connection (autocommit: a SET rolled back with the
    pool's first reset would be undone). A setting the server does not know (tcp_user_timeout
    before PostgreSQL 12) is left out, with one warning, rather than failing every connection."""
    settings = server_settings(url)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        was = dbapi_conn.autocommit
        dbapi_conn.autocommit = True
        try:
            with dbapi_conn.cursor() as cur:
                for name, value in list(settings.items()):
                    try:
                        cur.execute("SELECT set_config(%s, %s, false)", (name, value))
                    except psycopg.errors.UndefinedObject:
                        log.warning("event=pg_setting_unknown name=%s: this PostgreSQL has no such setting; "
                                    "it is left out", name)
                        settings.pop(name, None)
        finally:
            dbapi_conn.autocommit = was
