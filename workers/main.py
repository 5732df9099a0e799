"""`orchestrator worker`: one worker process."""

from __future__ import annotations

import logging
import os
import signal

from orchestrator.errors import OrchestratorError
from orchestrator.gpu import build_probe
from orchestrator.migrate import check_at_head
from orchestrator.models import PRELOAD_JOB_TYPE
from orchestrator.sdnotify import Notifier, recent
from orchestrator.settings import EMBEDDED, Settings
from orchestrator.telemetry import GpuReporter
from orchestrator.wiring import build_store, build_streams
from workers import builtin
from workers.metrics import WorkerMetrics, serve_metrics
from workers.models import ModelAffinity, WarmModels
from workers.pool import PARENT_ENV, exit_with_pool_parent
from workers.registration import pool_defaults
from workers.registry import HandlerRegistry
from workers.runtime import Worker

logger = logging.getLogger(__name__)


def run_worker(
    settings: Settings,
    *,
    job_types: list[str] | None,
    concurrency: int | None,
    imports: list[str],
    pool: str | None = None,
) -> int:
    exit_with_pool_parent()
    # A pool's worker is not its unit's main process: its supervisor speaks to systemd.
    notifier = Notifier.from_env(ignore=PARENT_ENV in os.environ)
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
        models = WarmModels(store, settings)
        if PRELOAD_JOB_TYPE not in registry.types:  # an imported module's own handler wins
            registry.register(PRELOAD_JOB_TYPE, models.preload)
        if pool is not None:
            job_types, concurrency = pool_defaults(store, settings, pool, job_types, concurrency)
        metrics = WorkerMetrics()
        worker = Worker(
            store,
            streams,
            registry,
            settings,
            job_types=job_types,
            concurrency=concurrency,
            pool=pool,
            models=models,
            affinity=ModelAffinity(store, settings, warm=models),
            observer=metrics,
        )
        models.worker_id = worker.id
        worker.install_signal_handlers()
        notifier.stopping_on_signals(signal.SIGTERM, signal.SIGINT)
        # READY=1 at the monitor's first heartbeat (registered, serving); the watchdog is fed
        # while it goes on heartbeating: a worker whose monitor hangs gets restarted.
        watchdog = notifier.watch(
            recent(lambda: worker.beat_at, notifier.stale_after(settings.heartbeat_interval_s)),
            ready=lambda: worker.beat_at is not None,
            status=f"worker {worker.id}: {','.join(worker.job_types)}, {worker.concurrency} slots",
        )
        # This node's GPUs, reported while the worker runs: they are what its jobs lease.
        reporter = GpuReporter(store, build_probe(settings), settings, worker.clock)
        reporter.start()
        endpoint = serve_metrics(metrics, settings)  # None unless ORCH_WORKER_METRICS_PORT
        try:
            worker.run()
        finally:
            if endpoint is not None:
                endpoint.close()
            watchdog.stop()
            notifier.close()
            reporter.stop()
        models.forget()  # its loaded models go with the process
    finally:
        streams.close()
        store.close()
    return 0
