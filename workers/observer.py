"""Named hooks a worker calls at the points of a job's life, for cross-cutting concerns
(metrics today) that would otherwise be spread through the loop, in the manner of
dramatiq's middleware.

`WorkerObserver` does nothing at each hook; a concern subclasses it and overrides what it
needs (`workers.metrics.WorkerMetrics`). Hooks run on the worker's own threads (slots, the
completions thread, the drain), so they must be quick, must not block and must not raise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from orchestrator.fleet import WorkerRegistration
from orchestrator.jobs import Claim, Dispatch, JobStatus
from orchestrator.metrics import LeaseMetrics
from orchestrator.store import Outcome

# What became of an attempt (the `outcome` of `job_finished`).
DONE = "done"
RETRY = "retry"  # failed; another attempt follows after the backoff
DEAD_LETTER = "dead_letter"  # failed, and it was the last attempt
CANCELLED = "cancelled"
RELEASED = "released"  # given back unfinished at shutdown; the attempt does not count
FENCED = "fenced"  # the claim was no longer current: the result was rejected
UNRECORDED = "unrecorded"  # the database did not take the outcome: left for the reclaimer
OUTCOMES = (DONE, RETRY, DEAD_LETTER, CANCELLED, RELEASED, FENCED, UNRECORDED)

# Why a claimed job was given back before its handler ran (`job_given_back`).
GIVEN_BACK_GPU = "gpu_lease"  # no room on this node's GPUs yet
GIVEN_BACK_AFFINITY = "model_affinity"  # its model is warm on another node


def outcome_of(outcome: Outcome) -> str:
    """The `job_finished` outcome for what the store recorded."""
    return {
        None: FENCED,
        JobStatus.DONE: DONE,
        JobStatus.FAILED: RETRY,
        JobStatus.DEAD_LETTER: DEAD_LETTER,
        JobStatus.CANCELLED: CANCELLED,
        JobStatus.PENDING: RELEASED,
    }.get(outcome.status, FENCED)


@dataclass(frozen=True)
class WorkerView:
    """What an observer may know of its worker: who it is, and its slots read live."""

    worker: WorkerRegistration  # id, node, pool, concurrency
    idle_slots: Callable[[], int]
    running_jobs: Callable[[], int]


class WorkerObserver:
    """The hooks, in the order a job meets them. Each does nothing here."""

    def bind(self, worker: WorkerView) -> None:
        """Once, when the worker is built."""

    def lease_metrics(self) -> LeaseMetrics | None:
        """Where the worker's lease service counts its jobs' leases; None: nowhere."""
        return None

    def delivery_skipped(self, dispatch: Dispatch) -> None:
        """A stale or duplicate delivery failed its claim; no handler runs."""

    def job_claimed(self, claim: Claim) -> None:
        """This worker won the claim of an attempt."""

    def job_given_back(self, claim: Claim, reason: str) -> None:
        """A claimed job was given back before its handler ran (`GIVEN_BACK_*`)."""

    def job_started(self, claim: Claim) -> None:
        """The handler is about to run."""

    def job_finished(self, claim: Claim, outcome: str) -> None:
        """The attempt's outcome was recorded (or could not be): one of `OUTCOMES`. An
        attempt that could never get a lease finishes without having started."""
