"""`orchestrator up` and `orchestrator serve`: run the service."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

import uvicorn

from orchestrator import migrate
from orchestrator.api.app import create_app
from orchestrator.settings import EMBEDDED, Settings
from orchestrator.streams.embedded import EmbeddedRedis
from orchestrator.wiring import build_services, build_store
from workers.pool import LocalPool

logger = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """Uvicorn, minus its re-raising of SIGINT after shutdown (a traceback on every Ctrl-C)."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        def on_signal(signum: int, frame: FrameType | None) -> None:
            self.handle_exit(signum, frame)

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def serve(settings: Settings, *, run_engine: bool = True) -> None:
    """The API (and the engine) until SIGINT/SIGTERM. The schema must be at head."""
    store = build_store(settings)
    migrate.check_at_head(store.engine)
    services = build_services(settings, store=store)
    try:
        server = _Server(
            uvicorn.Config(
                create_app(services, run_engine=run_engine),
                host=settings.host,
                port=settings.port,
                log_config=None,
                timeout_graceful_shutdown=10,
            )
        )
        server.run()
    finally:
        services.close()


def up(settings: Settings, *, workers: int, concurrency: int) -> None:
    """Everything on one machine: embedded Redis (unless ORCH_REDIS_URL names one), the
    schema, the API with the engine, and a pool of worker processes with the built-ins."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    embedded = None
    if settings.redis_url == EMBEDDED:
        embedded = EmbeddedRedis(settings.data_dir)
        embedded.start()
        settings = settings.model_copy(update={"redis_url": embedded.url})
    pool = None
    try:
        store = build_store(settings)
        migrate.upgrade(store.engine)
        store.close()
        env = {
            **os.environ,
            "ORCH_DATA_DIR": str(settings.data_dir.resolve()),
            "ORCH_DATABASE_URL": settings.resolved_database_url(),
            "ORCH_REDIS_URL": settings.resolved_redis_url(),
        }
        pool = LocalPool(workers, ["--concurrency", str(concurrency)], env)
        pool.start()
        url = f"http://{settings.host}:{settings.port}"
        logger.info(
            "orchestrator up: API on %s (docs at %s/docs), %d worker processes, data in %s. "
            "Ctrl-C stops it.",
            url,
            url,
            workers,
            settings.data_dir.resolve(),
            extra={"event": "up"},
        )
        serve(settings)
    finally:
        if pool is not None:
            pool.stop(settings.shutdown_grace_s)
        if embedded is not None:
            embedded.stop()
