"""Prometheus metrics, prefix `gpu_orchestrator_`: counters the API and engine keep, and
gauges read from the database and Redis at scrape time (so any replica reports the truth).
Workers keep their own (workers/metrics.py). Every metric is listed in docs/metrics.md."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import timedelta

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from orchestrator.clock import Clock, SystemClock
from orchestrator.errors import Unavailable
from orchestrator.fleet import PoolStatus, WorkerStatus
from orchestrator.jobs import JobStatus
from orchestrator.store import Store
from orchestrator.streams import Streams

logger = logging.getLogger(__name__)

PREFIX = "gpu_orchestrator_"

# Worker rows read per scrape: far above any fleet's size (pools cap it at
# pool_max_total_workers), so the gauge is never a silent undercount.
MAX_WORKER_ROWS = 100_000


class LeaseMetrics:
    """The GPU lease metrics, kept where leases are asked for: by the API for agents' leases,
    and by each worker for its jobs' leases, on that process's own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = registry if registry is not None else CollectorRegistry()
        self.leases_granted = Counter(
            f"{PREFIX}leases_granted_total", "GPU leases granted.", registry=registry
        )
        self.leases_denied = Counter(
            f"{PREFIX}leases_denied_total",
            "GPU lease requests denied (after any wait), by reason.",
            ["reason"],
            registry=registry,
        )
        self.lease_expired = Counter(
            f"{PREFIX}lease_expired_total",
            "GPU leases that expired, not heartbeated within their ttl (counted by the leader).",
            registry=registry,
        )
        self.lease_wait = Histogram(
            f"{PREFIX}lease_wait_seconds",
            "Time from a lease request to its grant.",
            buckets=(0.001, 0.005, 0.025, 0.1, 0.5, 1, 2.5, 10, 30, 60, 300),
            registry=registry,
        )


class Metrics(LeaseMetrics):
    """The API process's metrics. One registry per process (no module-level singletons)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        super().__init__(self.registry)
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
        # The same name as the workers' counter: summed over every target, all dead letters.
        self.dead_letters = Counter(
            f"{PREFIX}dead_letters_total",
            "Jobs dead-lettered here (the API: by the reclaimer, the last attempt's worker "
            "died), by type.",
            ["type"],
            registry=self.registry,
        )

    def watch(
        self,
        store: Store,
        streams: Streams,
        is_leader: Callable[[], bool],
        *,
        clock: Clock | None = None,
        stale_after_s: float = 30.0,
    ) -> None:
        """Add the scrape-time gauges. `stale_after_s` (the visibility timeout) is how old a
        worker's heartbeat may be before the worker counts as lost."""
        self.registry.register(
            StateCollector(store, streams, is_leader, clock=clock, stale_after_s=stale_after_s)
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


class StateCollector(Collector):
    """Gauges read at scrape time. A backend that does not answer makes
    `gpu_orchestrator_scrape_error` 1 instead of failing the scrape."""

    def __init__(
        self,
        store: Store,
        streams: Streams,
        is_leader: Callable[[], bool],
        *,
        clock: Clock | None = None,
        stale_after_s: float = 30.0,
    ) -> None:
        self.store = store
        self.streams = streams
        self.is_leader = is_leader
        self.clock = clock or SystemClock()
        self.stale_after_s = stale_after_s

    def collect(self) -> Iterator[Metric]:
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
        db_families: list[Metric] = []
        try:
            for job_type, status, band, count in self.store.queue_depths():
                if status == JobStatus.DEAD_LETTER:
                    dead_by_type[job_type] = dead_by_type.get(job_type, 0.0) + float(count)
                else:
                    depth.add_metric([job_type, status, band.label], float(count))
            db_families = self._gpu_families() + self._fleet_families() + self._usage_families()
            errors.add_metric(["database"], 0.0)
        except Unavailable as exc:
            logger.warning("metrics: %s", exc, extra={"event": "scrape_error"})
            errors.add_metric(["database"], 1.0)
        yield from db_families
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

    def _gpu_families(self) -> list[GaugeMetricFamily]:
        """Per-device gauges from the nodes' last reports, and the VRAM leased on each."""
        labels = ["node", "gpu"]
        total = GaugeMetricFamily(
            f"{PREFIX}gpu_memory_total_mb", "Device memory, as last reported.", labels=labels
        )
        used = GaugeMetricFamily(
            f"{PREFIX}gpu_memory_used_mb", "Device memory in use, as measured.", labels=labels
        )
        leased = GaugeMetricFamily(
            f"{PREFIX}gpu_memory_leased_mb", "Device memory held by active leases.", labels=labels
        )
        util = GaugeMetricFamily(
            f"{PREFIX}gpu_utilization_pct", "Device utilisation, as measured.", labels=labels
        )
        temp = GaugeMetricFamily(
            f"{PREFIX}gpu_temperature_c", "Device temperature, as measured.", labels=labels
        )
        healthy = GaugeMetricFamily(
            f"{PREFIX}gpu_healthy",
            "1 if the device is healthy (not hot, NVML answering).",
            labels=labels,
        )
        quarantined = GaugeMetricFamily(
            f"{PREFIX}gpu_quarantined",
            "1 while the device is quarantined (no new leases until an admin clears it).",
            labels=labels,
        )
        active = GaugeMetricFamily(
            f"{PREFIX}leases_active", "Active GPU leases, by node.", labels=["node"]
        )
        held: dict[tuple[str, int], int] = {}
        per_node: dict[str, int] = {}
        now = self.clock.now()
        for lease in self.store.list_leases():
            if lease.node is None or not lease.is_live(now):
                continue
            per_node[lease.node] = per_node.get(lease.node, 0) + 1
            for index in lease.devices:
                held[(lease.node, index)] = held.get((lease.node, index), 0) + lease.est_vram_mb
        for d in self.store.list_devices():
            key = [d.node, str(d.index)]
            total.add_metric(key, float(d.memory_total_mb))
            used.add_metric(key, float(d.memory_used_mb))
            leased.add_metric(key, float(held.get(d.key, 0)))
            healthy.add_metric(key, 1.0 if d.health == "ok" else 0.0)
            quarantined.add_metric(key, 1.0 if d.quarantined else 0.0)
            if d.utilization_gpu_pct is not None:
                util.add_metric(key, d.utilization_gpu_pct)
            if d.temperature_c is not None:
                temp.add_metric(key, d.temperature_c)
        for node, count in sorted(per_node.items()):
            active.add_metric([node], float(count))
        return [total, used, leased, util, temp, healthy, quarantined, active]

    def _usage_families(self) -> list[Metric]:
        """GPU accounting from the usage rows (every replica reports the same totals; they
        only grow, as a lease's row is written once when it ends)."""
        gpu_seconds = CounterMetricFamily(
            f"{PREFIX}gpu_seconds",
            "GPU-seconds (seconds held x devices) of finished leases, by owner and type.",
            labels=["owner", "type"],
        )
        vram = CounterMetricFamily(
            f"{PREFIX}vram_mb_seconds",
            "Estimated VRAM MB-seconds (est_vram_mb x seconds x devices) of finished leases, "
            "by owner and type.",
            labels=["owner", "type"],
        )
        peak = CounterMetricFamily(
            f"{PREFIX}vram_mb_seconds_peak",
            "Measured VRAM MB-seconds (peak_vram_mb x seconds x devices) of finished leases "
            "whose holder reported a peak, by owner and type.",
            labels=["owner", "type"],
        )
        # `type` is a job's type for a job's lease and "other" for any other lease (an
        # agent's operation is free text: it must not make the label unbounded).
        for owner, job_type, seconds, mb_seconds, peak_mb_s in self.store.usage_by_owner_type():
            gpu_seconds.add_metric([owner, job_type or ""], seconds)
            vram.add_metric([owner, job_type or ""], mb_seconds)
            peak.add_metric([owner, job_type or ""], peak_mb_s)
        return [gpu_seconds, vram, peak]

    def _fleet_families(self) -> list[GaugeMetricFamily]:
        """Workers by pool and status from their rows, and what each active pool wants."""
        stale_before = self.clock.now() - timedelta(seconds=self.stale_after_s)
        workers = GaugeMetricFamily(
            f"{PREFIX}workers",
            "Registered worker processes (not stopped) by pool ('' for none) and status "
            "(running, draining, lost: no heartbeat within the visibility timeout).",
            labels=["pool", "status"],
        )
        counts: dict[tuple[str, str], int] = {}
        for w in self.store.list_workers(limit=MAX_WORKER_ROWS):
            # The leader marks a silent worker lost on its next pass; the heartbeat says so now.
            status = w.status.value if w.alive(stale_before) else WorkerStatus.LOST.value
            key = (w.pool or "", status)
            counts[key] = counts.get(key, 0) + 1
        for (pool, status), count in sorted(counts.items()):
            workers.add_metric([pool, status], float(count))
        desired = GaugeMetricFamily(
            f"{PREFIX}pool_desired_workers",
            "Worker processes each active pool wants.",
            labels=["pool"],
        )
        for p in self.store.list_pools(stale_before):
            if p.status is PoolStatus.ACTIVE:
                desired.add_metric([p.name], float(p.desired))
        return [workers, desired]
