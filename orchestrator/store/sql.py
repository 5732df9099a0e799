"""`SqlStore`: the `Store` on SQLAlchemy Core, for MariaDB and SQLite alike."""

from __future__ import annotations

from orchestrator.store import dialect
from orchestrator.store.sql_agents import SqlAgents
from orchestrator.store.sql_attempts import SqlAttempts
from orchestrator.store.sql_batches import SqlBatches
from orchestrator.store.sql_fleet import SqlFleet
from orchestrator.store.sql_gpu_health import SqlGpuHealth
from orchestrator.store.sql_insight import SqlInsight
from orchestrator.store.sql_jobs import SqlJobs
from orchestrator.store.sql_leases import SqlLeases
from orchestrator.store.sql_models import SqlModels
from orchestrator.store.sql_tokens import SqlTokens
from orchestrator.store.sql_usage import SqlUsage


class SqlStore(
    SqlJobs,
    SqlBatches,
    SqlAttempts,
    SqlLeases,
    SqlAgents,
    SqlFleet,
    SqlModels,
    SqlInsight,
    SqlTokens,
    SqlUsage,
    SqlGpuHealth,
):
    """Jobs, GPUs and leases, the fleet and models in MariaDB or SQLite. Each public method
    is one transaction."""

    @classmethod
    def from_url(cls, url: str, *, sqlite_busy_timeout_ms: int = 15000) -> SqlStore:
        return cls(dialect.create_engine(url, sqlite_busy_timeout_ms=sqlite_busy_timeout_ms))
