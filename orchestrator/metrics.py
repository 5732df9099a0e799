"""Prometheus metrics, prefix `gpu_orchestrator_`: counters the API and engine keep, and
gauges read from the database and Redis at scrape time (so any replica reports the truth).
Every metric is listed in docs/metrics.md."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from orchestrator.errors import Unavailable
from orchestrator.jobs import JobStatus
from orchestrator.store import Store
from orchestrator.streams import Streams

logger = logging.getLogger(__name__)

PREFIX = "gpu_orchestrator_"


class Metrics:
    """One registry per process (no module-level singletons)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.jobs_submitted = Counter(
            f"{PREFIX}jobs_submitted_total",
            "Jobs created by submits.",
            ["type"],
            registry=self.registry,
        )
        self.reclaimed = Counter(
            f"{PREFIX}reclaimed_total",
            "What reclaim passes did: requeued (a worker died or held a message), "
            "dead_lettered, republished (a message Redis lost).",
            ["outcome"],
            registry=self.registry,
        )

    def watch(self, store: Store, streams: Streams, is_leader: Callable[[], bool]) -> None:
        self.registry.register(StateCollector(store, streams, is_leader))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class StateCollector(Collector):
    """Gauges read at scrape time. A backend that does not answer makes
    `gpu_orchestrator_scrape_error` 1 instead of failing the scrape."""

    def __init__(self, store: Store, streams: Streams, is_leader: Callable[[], bool]) -> None:
        self.store = store
        self.streams = streams
        self.is_leader = is_leader

    def collect(self) -> Iterator[GaugeMetricFamily]:
        leader = GaugeMetricFamily(f"{PREFIX}leader", "1 if this replica leads.")
        leader.add_metric([], 1.0 if self.is_leader() else 0.0)
        yield leader
        errors = GaugeMetricFamily(
            f"{PREFIX}scrape_error",
            "1 if a backend did not answer this scrape.",
            labels=["backend"],
        )
        depth = GaugeMetricFamily(
            f"{PREFIX}job_queue_depth",
            "Unfinished jobs by type, status (pending, failed = waiting to retry, claimed, "
            "running) and priority band.",
            labels=["type", "status", "priority"],
        )
        dead = GaugeMetricFamily(
            f"{PREFIX}dead_letter_jobs", "Dead-lettered jobs, by type.", labels=["type"]
        )
        dead_by_type: dict[str, float] = {}
        try:
            for job_type, status, band, count in self.store.queue_depths():
                if status == JobStatus.DEAD_LETTER:
                    dead_by_type[job_type] = dead_by_type.get(job_type, 0.0) + float(count)
                else:
                    depth.add_metric([job_type, status, band.label], float(count))
            errors.add_metric(["database"], 0.0)
        except Unavailable as exc:
            logger.warning("metrics: %s", exc, extra={"event": "scrape_error"})
            errors.add_metric(["database"], 1.0)
        yield depth
        for job_type, dead_count in sorted(dead_by_type.items()):
            dead.add_metric([job_type], dead_count)
        yield dead
        pending = GaugeMetricFamily(
            f"{PREFIX}stream_pending",
            "Messages delivered to a consumer and not yet acked, by stream.",
            labels=["stream"],
        )
        try:
            for stream, count in self.streams.pending_counts().items():
                pending.add_metric([stream], float(count))
            errors.add_metric(["redis"], 0.0)
        except Unavailable as exc:
            logger.warning("metrics: %s", exc, extra={"event": "scrape_error"})
            errors.add_metric(["redis"], 1.0)
        yield pending
        yield errors
