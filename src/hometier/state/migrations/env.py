"""Alembic environment for the state database (run by ``hometier.state.db.upgrade``).

The caller passes an open connection in ``config.attributes["connection"]``; without one
(the ``alembic`` command line, for writing a new revision) the URL comes from the
``sqlalchemy.url`` option or ``HOMETIER_DB``.
"""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import Connection, text

from hometier.state.db import MIGRATION_LOCK_ID, make_engine
from hometier.state.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite alters tables by copying them; later revisions need batch mode there.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Two workers starting together: the second waits, then finds head applied.
            connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": MIGRATION_LOCK_ID})
        context.run_migrations()


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url") or os.environ["HOMETIER_DB"],
        target_metadata=target_metadata,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        run_migrations(connection)
        return
    engine = make_engine(config.get_main_option("sqlalchemy.url") or os.environ["HOMETIER_DB"])
    try:
        with engine.connect() as conn:
            run_migrations(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
