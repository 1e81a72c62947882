"""Alembic environment: migrations run on the connection the coordinator hands over at start
(``Store.migrate``), or on ``-x url=...`` from the command line when generating a revision."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine
from sqlalchemy.engine import Connection

from coordinator.store.tables import metadata

connection = context.config.attributes.get("connection")
render_as_batch = True  # SQLite cannot ALTER most things; batch mode copies the table instead


def _run(conn: Connection) -> None:
    context.configure(connection=conn, target_metadata=metadata, render_as_batch=render_as_batch)
    with context.begin_transaction():
        context.run_migrations()


if connection is not None:
    _run(connection)
else:
    url = context.get_x_argument(as_dictionary=True).get("url", "sqlite:///:memory:")
    with create_engine(url).connect() as conn:
        _run(conn)
        conn.commit()
