"""The storage boundary: the engine, the API and workers talk to a `Store`, never to SQL."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from orchestrator.auth import TokenStore
from orchestrator.jobs import Claim, Dispatch, Job, JobEvent, JobSpec, JobStatus, Priority
from orchestrator.store.fleet_base import FleetStore
from orchestrator.store.gpu_base import GpuStore
from orchestrator.store.health_base import AgentStore, GpuHealthStore
from orchestrator.store.insight_base import InsightStore
from orchestrator.store.model_base import ModelStore
from orchestrator.store.usage_base import UsageStore


@dataclass(frozen=True)
class Submitted:
    """A job as a submit left it; `created` is False when an idempotency key matched."""

    job: Job
    created: bool


@dataclass(frozen=True)
class Outcome:
    """What recording an attempt's outcome did; `status` is None when the claim was fenced."""

    status: JobStatus | None
    job: Job | None = None

    @property
    def fenced(self) -> bool:
        return self.status is None


@dataclass(frozen=True)
class Reclaimed:
    """An attempt that lost its worker, and what became of its job."""

    job_id: str
    type: str
    priority: Priority
    attempt: int
    status: JobStatus
    worker_id: str | None
    heartbeat_at: datetime | None

    @property
    def dispatch(self) -> Dispatch:
        return Dispatch(self.job_id, self.type, self.priority, self.attempt)


@dataclass(frozen=True)
class JobPage:
    jobs: list[Job]
    next_cursor: str | None


class JobStore(Protocol):
    """Durable state of jobs. Every transition is one short conditional transaction."""

    def submit_jobs(self, specs: Sequence[JobSpec], now: datetime) -> list[Submitted]:
        """Insert the jobs, all or nothing. A reused idempotency key with the same request
        returns the existing job; with another request it raises `IdempotencyConflict`."""
        ...

    def mark_unpublished(self, job_ids: Sequence[str]) -> None:
        """Their message did not reach Redis: have the scheduler publish them again."""
        ...

    def due_dispatches(self, now: datetime, limit: int) -> list[Dispatch]:
        """Claimable jobs that are due and not yet published, most urgent first."""
        ...

    def mark_published(self, dispatches: Sequence[Dispatch], now: datetime) -> None:
        """Record that these dispatches' messages went out; a job that has meanwhile moved
        on to another attempt (or status) is left alone, so its new attempt still goes out."""
        ...

    def waiting_published_before(
        self, cutoff: datetime, limit: int, after: tuple[datetime, str] | None = None
    ) -> tuple[list[Dispatch], tuple[datetime, str] | None]:
        """A page of the waiting jobs published before `cutoff`, oldest first, after the
        cursor `after`; and the cursor of the next page (None at the end)."""
        ...

    def unpublish_waiting(self) -> int:
        """Redis lost its messages: mark every waiting job for publishing again."""
        ...

    def get_state(self, name: str) -> str | None:
        """A value the engine remembers across restarts (see `put_state`)."""
        ...

    def put_state(self, name: str, value: str, now: datetime) -> None: ...

    def get_job(self, job_id: str) -> Job | None: ...

    def list_jobs(
        self,
        *,
        status: str | None,
        type: str | None,
        limit: int,
        cursor: str | None,
        owner: str | None = None,
    ) -> JobPage:
        """Jobs newest first; with `owner`, only that owner's."""
        ...

    def job_events(self, job_id: str) -> list[JobEvent]: ...

    def cancel_job(self, job_id: str, now: datetime, actor: str) -> Job:
        """Cancel a waiting job, or ask a running one to stop. Raises `JobNotFound` or
        `JobFinished`."""
        ...

    def replay_dead_letter(self, job_id: str, now: datetime, actor: str) -> Job:
        """A dead-lettered job becomes pending with a fresh attempt budget. Raises
        `JobNotFound`, or `Conflict` when the job is not dead-lettered."""
        ...

    def job_attempts(self, job_ids: Sequence[str]) -> dict[str, tuple[JobStatus, int]]:
        """Status and attempts started of each job that exists."""
        ...

    def reclaim_stale(self, now: datetime, stale_before: datetime, limit: int) -> list[Reclaimed]:
        """Requeue or dead-letter attempts whose heartbeat is older than `stale_before`."""
        ...

    def claim_job(self, dispatch: Dispatch, worker_id: str, now: datetime) -> Claim | None:
        """Claim the attempt a message names; None when the message is stale or a duplicate."""
        ...

    def heartbeat(self, claims: Sequence[Claim], now: datetime) -> set[str]:
        """Refresh the heartbeat of running claims; returns the tokens asked to cancel."""
        ...

    def record_progress(self, claim: Claim, progress: Any, now: datetime) -> bool: ...

    def complete_job(self, claim: Claim, result: Any, now: datetime) -> Outcome: ...

    def claim_jobs(
        self, dispatches: Sequence[Dispatch], worker_id: str, now: datetime
    ) -> list[Claim | None]:
        """`claim_job` for each dispatch, in one transaction."""
        ...

    def complete_jobs(self, items: Sequence[tuple[Claim, Any]], now: datetime) -> list[Outcome]:
        """`complete_job` for each (claim, result), in one transaction; the outcomes of a
        group of more than one carry the status only, not the job."""
        ...

    def fail_job(self, claim: Claim, error: str, now: datetime, retry_delay_s: float) -> Outcome:
        """Fail the attempt: `failed` (retried after the delay) while attempts remain, else
        `dead_letter`; `cancelled` when a cancel was asked for."""
        ...

    def release_job(
        self, claim: Claim, now: datetime, *, delay_s: float = 0.0, reason: str | None = None
    ) -> Outcome:
        """Give an unfinished attempt back (worker shutdown, no GPU lease yet): `pending`,
        attempt not counted, offered again after `delay_s`."""
        ...

    def mark_running(self, claim: Claim, now: datetime, detail: dict[str, Any]) -> bool:
        """A `claimed` job got its GPU lease and runs now; False if the claim was lost."""
        ...

    def queue_depths(self) -> list[tuple[str, str, Priority, int]]:
        """(type, status, band, count) of every unfinished job, and of dead-lettered ones."""
        ...

    def check_schema(self) -> None:
        """Raise unless the database answers and its schema is at this code's head."""
        ...

    def close(self) -> None: ...


class Store(
    JobStore,
    GpuStore,
    FleetStore,
    ModelStore,
    InsightStore,
    TokenStore,
    UsageStore,
    GpuHealthStore,
    AgentStore,
    Protocol,
):
    """Everything durable: jobs, GPUs and leases, the fleet (pools, workers), models, and
    the insight queries (explain, queue statistics), GPU accounting."""
