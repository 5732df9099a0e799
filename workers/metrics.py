"""A worker process's own Prometheus metrics, and the endpoint that serves them.

Counters count what this process did since it started; the API's `/metrics` has the
fleet-wide state read from the database (docs/metrics.md says which process has what).
With `ORCH_WORKER_METRICS_PORT` set, each worker serves `GET /metrics` on the first free
port from there upward, so the several workers of one host (`orchestrator up`,
`orchestrator node`) each get their own.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)

from orchestrator.jobs import Claim, Dispatch
from orchestrator.metrics import PREFIX, LeaseMetrics
from orchestrator.settings import Settings
from workers.observer import DEAD_LETTER, RETRY, WorkerObserver, WorkerView

logger = logging.getLogger(__name__)

# Handler run times span milliseconds (echo) to hours (training).
RUN_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 14400)


class WorkerMetrics(WorkerObserver):
    """The observer that counts; one per worker, each on its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.leases = LeaseMetrics(self.registry)
        r = self.registry
        self.info = Gauge(
            f"{PREFIX}worker_info",
            "1, labelled with this worker's id, node and pool.",
            ["worker", "node", "pool"],
            registry=r,
        )
        self.slots = Gauge(
            f"{PREFIX}worker_slots",
            "Handler slots, busy (claiming, leasing, running, or recording a failure) or idle.",
            ["state"],
            registry=r,
        )
        self.running = Gauge(f"{PREFIX}worker_jobs_running", "Handlers running now.", registry=r)
        self.attempts = Counter(
            f"{PREFIX}job_attempts_total",
            "Claims this worker won: attempts it took on, by type.",
            ["type"],
            registry=r,
        )
        self.skipped = Counter(
            f"{PREFIX}worker_deliveries_skipped_total",
            "Stale or duplicate deliveries that failed their claim (acked, never run).",
            ["type"],
            registry=r,
        )
        self.started = Counter(
            f"{PREFIX}worker_jobs_started_total",
            "Handlers started, by type.",
            ["type"],
            registry=r,
        )
        self.finished = Counter(
            f"{PREFIX}worker_jobs_finished_total",
            "Attempts finished, by type and outcome.",
            ["type", "outcome"],
            registry=r,
        )
        self.run_seconds = Histogram(
            f"{PREFIX}job_run_seconds",
            "From a handler's start to its outcome's commit, by type.",
            ["type"],
            buckets=RUN_BUCKETS,
            registry=r,
        )
        self.retries = Counter(
            f"{PREFIX}job_retries_total",
            "Failed attempts that will be retried, by type.",
            ["type"],
            registry=r,
        )
        # The same name as the API's counter: summed over every target, all dead letters.
        self.dead_letters = Counter(
            f"{PREFIX}dead_letters_total",
            "Jobs dead-lettered here (a worker: the last attempt failed), by type.",
            ["type"],
            registry=r,
        )
        self.given_back = Counter(
            f"{PREFIX}jobs_given_back_total",
            "Claimed jobs given back before their handler ran, by type and reason "
            "(gpu_lease: no room on this node's GPUs yet; model_affinity).",
            ["type", "reason"],
            registry=r,
        )
        self._lock = threading.Lock()
        self._starts: dict[str, float] = {}  # claim token -> monotonic start

    # -- hooks ----------------------------------------------------------------------------

    def bind(self, view: WorkerView) -> None:
        w = view.worker
        self.info.labels(w.id, w.node, w.pool or "").set(1)
        self.slots.labels("idle").set_function(lambda: float(view.idle_slots()))
        self.slots.labels("busy").set_function(lambda: float(w.concurrency - view.idle_slots()))
        self.running.set_function(lambda: float(view.running_jobs()))

    def lease_metrics(self) -> LeaseMetrics:
        return self.leases

    def delivery_skipped(self, dispatch: Dispatch) -> None:
        self.skipped.labels(dispatch.type).inc()

    def job_claimed(self, claim: Claim) -> None:
        self.attempts.labels(claim.job.type).inc()

    def job_given_back(self, claim: Claim, reason: str) -> None:
        self.given_back.labels(claim.job.type, reason).inc()

    def job_started(self, claim: Claim) -> None:
        self.started.labels(claim.job.type).inc()
        with self._lock:
            self._starts[claim.token] = time.monotonic()

    def job_finished(self, claim: Claim, outcome: str) -> None:
        job_type = claim.job.type
        self.finished.labels(job_type, outcome).inc()
        if outcome == RETRY:
            self.retries.labels(job_type).inc()
        elif outcome == DEAD_LETTER:
            self.dead_letters.labels(job_type).inc()
        with self._lock:
            started = self._starts.pop(claim.token, None)
        if started is not None:  # None: it never ran (no lease could ever fit it here)
            self.run_seconds.labels(job_type).observe(time.monotonic() - started)

    def render(self) -> bytes:
        return generate_latest(self.registry)


@dataclass
class MetricsServer:
    """A worker's running metrics endpoint."""

    server: WSGIServer
    thread: threading.Thread
    host: str
    port: int

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def serve_metrics(metrics: WorkerMetrics, settings: Settings) -> MetricsServer | None:
    """Serve `metrics` on the first free port of `worker_metrics_port` ..
    `+ worker_metrics_port_span - 1`; None when the setting is 0 (off) or every port is
    taken (the worker runs on without an endpoint: metrics must never stop work)."""
    base = settings.worker_metrics_port
    if base == 0:
        return None
    host = settings.worker_metrics_host
    last = min(base + settings.worker_metrics_port_span - 1, 65535)
    for port in range(base, last + 1):
        try:
            server, thread = start_http_server(port, addr=host, registry=metrics.registry)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                continue  # another worker of this host has it
            logger.error(
                "worker metrics: cannot listen on %s:%d: %s",
                host,
                port,
                exc,
                extra={"event": "worker_metrics_failed"},
            )
            return None
        logger.info(
            "worker metrics on http://%s:%d/metrics",
            host,
            port,
            extra={"event": "worker_metrics_serving", "port": port},
        )
        return MetricsServer(server, thread, host, port)
    logger.error(
        "worker metrics: ports %d-%d on %s are all taken; running without an endpoint",
        base,
        last,
        host,
        extra={"event": "worker_metrics_failed"},
    )
    return None
