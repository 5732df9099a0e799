"""Migrating an empty database gives exactly the models' schema, on each backend."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from orchestrator import migrate
from orchestrator.store.tables import metadata
from tests.integration.backends import Backend


def test_migrations__empty_database_matches_models(backend: Backend) -> None:
    store = backend.store()
    try:
        migrate.upgrade(store.engine)
        with store.engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(context, metadata)
        assert diff == []
        assert migrate.current_revision(store.engine) == migrate.head_revision(store.engine)
        inspector = sa.inspect(store.engine)
        assert {"orchestrator_jobs", "orchestrator_job_events"} <= set(inspector.get_table_names())
    finally:
        store.close()


def test_migrations__downgrade_and_upgrade_again(backend: Backend) -> None:
    store = backend.store()
    try:
        migrate.upgrade(store.engine)
        migrate.upgrade(store.engine)  # a second upgrade is a no-op
        config = migrate.alembic_config(store.engine)
        from alembic import command

        with store.engine.begin() as conn:
            config.attributes["connection"] = conn
            command.downgrade(config, "base")
        assert "orchestrator_jobs" not in sa.inspect(store.engine).get_table_names()
        migrate.upgrade(store.engine)
        assert "orchestrator_jobs" in sa.inspect(store.engine).get_table_names()
    finally:
        store.close()
