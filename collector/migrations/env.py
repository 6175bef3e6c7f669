"""Alembic environment: runs on the connection the collector hands over (or the configured URL)."""

from alembic import context
from sqlalchemy import create_engine

from collector.schema import metadata

config = context.config


def run() -> None:
    conn = config.attributes.get("connection")
    if conn is not None:
        context.configure(connection=conn, target_metadata=metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    url = config.get_main_option("sqlalchemy.url")
    assert url is not None  # collector.db.alembic_config sets it
    engine = create_engine(url)
    with engine.connect() as c:
        context.configure(connection=c, target_metadata=metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()


run()
