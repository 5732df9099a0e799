"""The one place where the pieces are built and wired together from settings."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from orchestrator.auth import Authenticator
from orchestrator.clock import Clock, SystemClock
from orchestrator.engine import Engine
from orchestrator.ids import new_token
from orchestrator.lease_service import LeaseService
from orchestrator.metrics import Metrics
from orchestrator.model_service import ModelService
from orchestrator.pool_policy import PoolPolicy
from orchestrator.rate_limit import SubmitRateLimit
from orchestrator.reclaimer import Reclaimer
from orchestrator.service import JobService
from orchestrator.settings import Settings
from orchestrator.store import SqlStore, Store
from orchestrator.store.election import Election, create_election
from orchestrator.streams import RedisStreams, Streams


@dataclass
class Services:
    settings: Settings
    store: Store
    streams: Streams
    clock: Clock
    jobs: JobService
    models: ModelService
    reclaimer: Reclaimer
    pool_policy: PoolPolicy
    leases: LeaseService
    engine: Engine
    metrics: Metrics
    auth: Authenticator
    submit_limit: SubmitRateLimit

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
    election: Election | None = None,
) -> Services:
    store = store or build_store(settings)
    streams = streams or build_streams(settings)
    clock = clock or SystemClock()
    if election is None:
        if not isinstance(store, SqlStore):
            raise TypeError("pass an election to go with a store that is not a SqlStore")
        election = create_election(
            store.engine, instance_id(settings), settings.leader_lease_s, settings.leader_lock
        )
    metrics = Metrics()
    reclaimer = Reclaimer(store, streams, settings, clock, metrics)
    pool_policy = PoolPolicy(store, settings, clock)
    leases = LeaseService(store, settings, clock, metrics)
    engine = Engine(
        store,
        streams,
        settings,
        clock,
        election,
        reclaimer,
        pool_policy=pool_policy,
        leases=leases,
    )
    metrics.watch(
        store,
        streams,
        lambda: engine.leading,
        clock=clock,
        stale_after_s=settings.visibility_timeout_s,
    )
    jobs = JobService(store, streams, settings, clock, metrics)
    return Services(
        settings=settings,
        store=store,
        streams=streams,
        clock=clock,
        jobs=jobs,
        models=ModelService(store, jobs, clock),
        reclaimer=reclaimer,
        pool_policy=pool_policy,
        leases=leases,
        engine=engine,
        metrics=metrics,
        auth=Authenticator(store, settings, clock),
        submit_limit=SubmitRateLimit(settings.submit_rate_per_s, settings.submit_burst, clock),
    )


def instance_id(settings: Settings) -> str:
    return settings.instance_id or f"{socket.gethostname()}-{os.getpid()}-{new_token()[:6]}"
