"""`orchestrator worker`: one worker process."""

from __future__ import annotations

import logging

from orchestrator.errors import OrchestratorError
from orchestrator.migrate import check_at_head
from orchestrator.settings import EMBEDDED, Settings
from orchestrator.wiring import build_store, build_streams
from workers import builtin
from workers.pool import exit_with_pool_parent
from workers.registry import HandlerRegistry
from workers.runtime import Worker

logger = logging.getLogger(__name__)


def run_worker(
    settings: Settings,
    *,
    job_types: list[str] | None,
    concurrency: int | None,
    imports: list[str],
) -> int:
    exit_with_pool_parent()
    registry = HandlerRegistry()
    registry.add_module(builtin)
    registry.import_modules(imports)
    if settings.redis_url == EMBEDDED and not settings.embedded_redis_socket().exists():
        raise OrchestratorError(
            f"no embedded Redis at {settings.embedded_redis_socket()}: start `orchestrator up` "
            "(and point ORCH_DATA_DIR at its data folder), or set ORCH_REDIS_URL"
        )
    store = build_store(settings)
    streams = build_streams(settings)
    try:
        check_at_head(store.engine)
        worker = Worker(
            store, streams, registry, settings, job_types=job_types, concurrency=concurrency
        )
        worker.install_signal_handlers()
        worker.run()
    finally:
        streams.close()
        store.close()
    return 0
