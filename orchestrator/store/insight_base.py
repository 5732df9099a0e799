"""The storage boundary for insight: where a job stands in its queue, queue statistics,
and moving a waiting job to another band."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from orchestrator.jobs import Job, Priority
from orchestrator.leases import Lease
from orchestrator.queue_order import UsageSample


@dataclass(frozen=True)
class QueuePlace:
    """Where a waiting job stands in its type's streams: `ahead` counts the jobs a worker
    reads before it (due, published, more urgent band, or its band and published earlier)."""

    published: bool
    ahead: dict[Priority, int] = field(default_factory=dict)
    capped: bool = False  # more are ahead than were counted


@dataclass(frozen=True)
class QueueStats:
    """One job type's queue over a window. A job's wait runs from when it was due (its
    `run_at` when submitted delayed, else its submit time) to its first `started` event:
    `waits_s` over the jobs submitted in the window that have started, `waiting_s` the wait
    so far of those still waiting (both a bounded sample of the newest); `oldest_wait_s`
    the longest wait so far of any job of the type that never started (None: none waits)."""

    type: str
    pending: dict[Priority, int]
    running: int
    waits_s: list[float]
    finished_last_hour: int
    done: int
    dead_letter: int
    cancelled: int
    waiting_s: list[float] = field(default_factory=list)
    oldest_wait_s: float | None = None


class InsightStore(Protocol):
    def queue_place(self, job: Job, now: datetime) -> QueuePlace:
        """The job's place in its type's streams (meaningful while it waits)."""
        ...

    def job_leases(self, job_id: str, limit: int = 5) -> list[Lease]:
        """The job's lease requests and leases, newest first."""
        ...

    def owner_usage(self, owners: Collection[str], since: datetime) -> list[UsageSample]:
        """Finished GPU usage of these owners since `since`, as `fair_share` weighs it."""
        ...

    def queue_statistics(
        self, now: datetime, since: datetime, job_type: str | None = None
    ) -> list[QueueStats]:
        """Per job type (or only `job_type`): depth, waits since `since`, outcomes."""
        ...

    def reprioritise_job(
        self, job_id: str, priority: Priority, now: datetime, actor: str
    ) -> tuple[Job, bool]:
        """Move a waiting job to `priority`: the row, its audit trail, and (when due) marked
        published again at once, for the caller to publish its message in the new band.
        Returns the job and whether it changed. Raises `JobNotFound`, or `Conflict` when
        the job is not waiting."""
        ...
