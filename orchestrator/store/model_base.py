"""The storage boundary for models: preload requests and which models are warm where."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from orchestrator.models import ModelDemand, ModelOverview, ModelPlacement


class ModelStore(Protocol):
    """Model preloads and warm models.

    A model has one preload row: the last request for it, carried out by the job `job_id`.
    Job ids grow with time (UUIDv7), and every write names its job: a write by an older job
    than the row's is refused, so a stale attempt of a superseded request never overwrites
    the newer one. A worker may write before the API has recorded the request (the job is
    published first); the API's record then leaves the worker's progress alone.
    """

    def queue_preloads(self, requests: Sequence[tuple[str, str]], now: datetime) -> None:
        """Record (model_id, job_id) requests as `queued`, unless a newer job holds the row
        or this job has already moved it on."""
        ...

    def mark_preload_loading(self, model_id: str, job_id: str, node: str, now: datetime) -> bool:
        """Job `job_id` started loading on `node`; False when a newer request holds the row
        (or this job already finished it)."""
        ...

    def mark_preload_done(self, model_id: str, job_id: str, node: str, now: datetime) -> bool:
        """Job `job_id` loaded the model on `node`; False when a newer request holds the row."""
        ...

    def mark_preload_failed(
        self, model_id: str, job_id: str, node: str, error: str, now: datetime
    ) -> bool:
        """An attempt of job `job_id` failed; False when a newer request holds the row or
        this job already loaded the model."""
        ...

    def record_warm(
        self, node: str, model_id: str, worker_id: str | None, size_bytes: int | None, now: datetime
    ) -> None:
        """Model `model_id` is loaded on `node`, by `worker_id`."""
        ...

    def forget_warm(
        self,
        *,
        node: str | None = None,
        model_id: str | None = None,
        worker_ids: Sequence[str] | None = None,
    ) -> int:
        """Remove the warm records that match every filter given (a node's, a model's, those
        the given workers loaded, e.g. workers that stopped or were lost); returns how many.
        Raises `InvalidRequest` when no filter is given."""
        ...

    def model_overview(self, model_ids: Sequence[str] | None = None) -> ModelOverview:
        """The preload rows (with their jobs' status) and warm records of these models (all
        models when None)."""
        ...

    def model_placement(self, model_id: str, job_type: str, live_after: datetime) -> ModelPlacement:
        """Where `model_id` is warm, and on which of those nodes a worker serving `job_type`
        is running with a heartbeat at or after `live_after`."""
        ...

    def model_demand(self, job_id: str) -> ModelDemand | None:
        """A job's type, model (from its GPU needs) and `available_at`; None if no such job."""
        ...
