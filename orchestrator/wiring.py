"""The one place where the pieces are built and wired together from settings."""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.clock import Clock, SystemClock
from orchestrator.engine import Engine
from orchestrator.service import JobService
from orchestrator.settings import Settings
from orchestrator.store import SqlStore, Store
from orchestrator.streams import RedisStreams, Streams


@dataclass
class Services:
    settings: Settings
    store: Store
    streams: Streams
    clock: Clock
    jobs: JobService
    engine: Engine

    def close(self) -> None:
        self.engine.stop()
        self.streams.close()
        self.store.close()


def build_store(settings: Settings) -> SqlStore:
    return SqlStore.from_url(
        settings.resolved_database_url(), sqlite_busy_timeout_ms=settings.sqlite_busy_timeout_ms
    )


def build_streams(settings: Settings) -> RedisStreams:
    return RedisStreams.from_url(settings.resolved_redis_url(), settings.redis_prefix)


def build_services(
    settings: Settings,
    *,
    store: Store | None = None,
    streams: Streams | None = None,
    clock: Clock | None = None,
) -> Services:
    store = store or build_store(settings)
    streams = streams or build_streams(settings)
    clock = clock or SystemClock()
    return Services(
        settings=settings,
        store=store,
        streams=streams,
        clock=clock,
        jobs=JobService(store, streams, settings, clock),
        engine=Engine(store, streams, settings, clock),
    )
