"""Schema migrations (Alembic), run programmatically."""

from __future__ import annotations

import importlib
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

from orchestrator.errors import OrchestratorError


def alembic_config(engine: Engine) -> Config:
    config = Config()
    # migrations/ installs as orchestrator.migrations (see pyproject.toml).
    scripts = importlib.import_module("orchestrator.migrations")
    config.set_main_option("script_location", str(Path(str(scripts.__file__)).parent))
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the database's schema to `revision`."""
    config = alembic_config(engine)
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, revision)


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision(engine: Engine) -> str | None:
    return ScriptDirectory.from_config(alembic_config(engine)).get_current_head()


def check_at_head(engine: Engine) -> None:
    """Refuse to run against a schema older (or newer) than this code's."""
    url = engine.url
    is_file = url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:")
    if is_file and not Path(str(url.database)).exists():
        raise OrchestratorError(
            f"no database at {url.database}: run `orchestrator db upgrade` (or "
            "`orchestrator up`) first, or point ORCH_DATA_DIR / ORCH_DATABASE_URL at it"
        )
    current, head = current_revision(engine), head_revision(engine)
    if current != head:
        raise OrchestratorError(
            f"the database schema is at revision {current or 'none'}, not {head}: "
            "run `orchestrator db upgrade` first"
        )
