"""`InsightService`: explain a job, queue statistics, re-prioritise a waiting job.

It gathers what `orchestrator.explain` reasons over (the store's queries, the settings, the
admission policy) and leaves the reasoning to that pure module.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import timedelta

from orchestrator.admission import Limits
from orchestrator.clock import Clock
from orchestrator.errors import JobNotFound, StreamsUnavailable, Unavailable
from orchestrator.explain import ExplainInputs, Explanation, explain
from orchestrator.jobs import Dispatch, Job, Priority
from orchestrator.leases import AdmissionPolicy, Lease, LeaseStatus, QueueOrder
from orchestrator.queue_order import decayed_usage
from orchestrator.settings import Settings
from orchestrator.store import Store
from orchestrator.store.insight_base import QueuePlace, QueueStats
from orchestrator.streams import Streams

logger = logging.getLogger(__name__)

_NOWHERE = QueuePlace(published=False)
# The longest window `GET /queue/statistics` looks back over.
MAX_WINDOW_S = 7 * 86400.0


@dataclass(frozen=True)
class QueueSummary:
    """One job type's statistics as the API reports them."""

    type: str
    pending_by_band: dict[str, int]
    pending: int
    running: int
    claimed_in_window: int
    avg_wait_s: float | None
    p95_wait_s: float | None
    waiting_in_window: int
    oldest_wait_s: float | None
    throughput_per_hour: int
    done: int
    dead_letter: int
    cancelled: int
    success_rate: float | None


def percentile(values: Sequence[float], pct: float) -> float | None:
    """The nearest-rank percentile (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def summarise(stats: QueueStats) -> QueueSummary:
    # Jobs still waiting count with their wait so far (a lower bound): a queue where
    # nothing starts must not look fast because only the lucky jobs are measured.
    waits = [*stats.waits_s, *stats.waiting_s]
    ended = stats.done + stats.dead_letter
    return QueueSummary(
        type=stats.type,
        pending_by_band={p.label: stats.pending.get(p, 0) for p in Priority},
        pending=sum(stats.pending.values()),
        running=stats.running,
        claimed_in_window=len(stats.waits_s),
        avg_wait_s=round(sum(waits) / len(waits), 3) if waits else None,
        p95_wait_s=None if not waits else round(percentile(waits, 95) or 0.0, 3),
        waiting_in_window=len(stats.waiting_s),
        oldest_wait_s=None if stats.oldest_wait_s is None else round(stats.oldest_wait_s, 3),
        throughput_per_hour=stats.finished_last_hour,
        done=stats.done,
        dead_letter=stats.dead_letter,
        cancelled=stats.cancelled,
        # Of the jobs that ended by running (cancelled ones did not get the chance).
        success_rate=round(stats.done / ended, 4) if ended else None,
    )


class InsightService:
    def __init__(self, store: Store, streams: Streams, settings: Settings, clock: Clock) -> None:
        self.store = store
        self.streams = streams
        self.settings = settings
        self.clock = clock

    def _job(self, job_id: str) -> Job:
        job = self.store.get_job(job_id)
        if job is None:
            raise JobNotFound(f"no job {job_id}", job_id=job_id)
        return job

    def explain(self, job: Job | str, *, sees_all: bool = True) -> Explanation:
        """Why the job is not running yet (or that it runs, or has finished). Without
        `sees_all` (a non-admin caller), other owners' leases are named by size and place
        only."""
        job = self._job(job) if isinstance(job, str) else job
        now = self.clock.now()
        if job.is_terminal:
            return explain(ExplainInputs(job=job, now=now, place=_NOWHERE, live_workers=0))
        stale_before = now - timedelta(seconds=self.settings.visibility_timeout_s)
        live = sum(
            1
            for w in self.store.list_workers()
            if w.alive(stale_before) and job.type in w.job_types
        )
        inputs = ExplainInputs(
            job=job,
            now=now,
            place=self.store.queue_place(job, now),
            live_workers=live,
            safe_mode=self.settings.safe_mode,
            sees_all=sees_all,
        )
        if job.gpu is not None:
            inputs = self._with_gpus(inputs)
            if job.gpu.model_id:
                placement = self.store.model_placement(job.gpu.model_id, job.type, stale_before)
                inputs = replace(
                    inputs, model=placement, model_affinity_s=self.settings.model_affinity_s
                )
        return explain(inputs)

    def _with_gpus(self, inputs: ExplainInputs) -> ExplainInputs:
        policy, _ = self.store.get_policy()
        active = self.store.list_leases((LeaseStatus.ACTIVE,))
        waiting = self.store.list_leases((LeaseStatus.WAITING,))
        return replace(
            inputs,
            leases=self.store.job_leases(inputs.job.id),
            devices=self.store.list_devices(),
            active=active,
            waiting=waiting,
            policy=policy,
            limits=Limits(self.settings.gpu_headroom_mb, self.settings.gpu_stale_s),
            usage=(
                self._fair_share_usage(policy, active, waiting)
                if policy.order is QueueOrder.FAIR_SHARE
                else None
            ),
        )

    def _fair_share_usage(
        self, policy: AdmissionPolicy, active: Sequence[Lease], waiting: Sequence[Lease]
    ) -> dict[str, float]:
        """Each waiting owner's decayed GPU-seconds, as the `fair_share` order weighs them."""
        now, fair = self.clock.now(), policy.fair_share
        owners = {lease.owner for lease in waiting}
        samples = self.store.owner_usage(owners, now - timedelta(seconds=fair.window_s))
        return decayed_usage(samples, active, now, fair)

    def statistics(self, job_type: str | None, window_s: float) -> list[QueueSummary]:
        now = self.clock.now()
        since = now - timedelta(seconds=window_s)
        return [summarise(s) for s in self.store.queue_statistics(now, since, job_type)]

    def reprioritise(self, job_id: str, priority: Priority, actor: str) -> Job:
        """Move a waiting job to another band; its message goes out again in the new one."""
        job, changed = self.store.reprioritise_job(job_id, priority, self.clock.now(), actor)
        if changed and job.available_at <= self.clock.now():
            dispatch = Dispatch(job.id, job.type, job.priority, job.attempts + 1)
            try:
                self.streams.publish([dispatch])
            except StreamsUnavailable as exc:
                logger.warning(
                    "job %s re-prioritised but not published, left for the scheduler: %s",
                    job.id,
                    exc,
                    extra={"event": "publish_deferred", "job_id": job.id},
                )
                try:
                    self.store.mark_unpublished([job.id])
                except Unavailable:
                    # The relay's check of Redis against the database republishes it.
                    logger.error(
                        "job %s is re-prioritised but unpublished",
                        job.id,
                        extra={"event": "publish_lost", "job_id": job.id},
                    )
        return job
