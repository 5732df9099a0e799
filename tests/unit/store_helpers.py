"""Helpers of the `SqlStore` tests."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from orchestrator.clock import FakeClock
from orchestrator.jobs import Claim, Dispatch, Job, JobSpec
from orchestrator.store import SqlStore

# The factory fixtures of conftest.py.
SpecFactory = Callable[..., JobSpec]
Submitter = Callable[..., Job]
CountRows = Callable[[], tuple[int, int]]
PublishedAt = Callable[[str], datetime | None]

WORKER = "worker-a"


def dispatch_of(job: Job, attempt: int = 1) -> Dispatch:
    """The message that delivers attempt `attempt` of the job."""
    return Dispatch(job.id, job.type, job.priority, attempt)


def claim(store: SqlStore, clock: FakeClock, job: Job, attempt: int = 1) -> Claim:
    """Claim attempt `attempt` as `WORKER`, which must succeed."""
    claimed = store.claim_job(dispatch_of(job, attempt), WORKER, clock.now())
    assert claimed is not None
    return claimed


def current(store: SqlStore, job_id: str) -> Job:
    """The job as stored now."""
    job = store.get_job(job_id)
    assert job is not None
    return job


def event_names(store: SqlStore, job_id: str) -> list[str]:
    return [e.event for e in store.job_events(job_id)]
