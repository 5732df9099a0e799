"""Alembic environment: runs on the connection that `orchestrator.migrate` hands it."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from orchestrator.settings import Settings
from orchestrator.store.dialect import create_engine
from orchestrator.store.tables import metadata

config = context.config
target_metadata = metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    # Plain `alembic upgrade head`: the database of the ORCH_ settings.
    url = config.get_main_option("sqlalchemy.url") or Settings().resolved_database_url()
    engine = create_engine(url)
    with engine.connect() as conn:
        _run(conn)
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run `orchestrator db upgrade`")
run_migrations_online()
