"""The models' vocabulary: model ids, preload requests and their states, warm models."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Literal

from orchestrator.errors import InvalidRequest
from orchestrator.jobs import JobStatus

# The job type of a preload; its jobs are delivered on stream:orchestrator:preloads.
PRELOAD_JOB_TYPE = "preloads"
MAX_MODEL_ID_LENGTH = 255
MAX_PRELOAD_MODELS = 100
# Path segments of letters, digits, '.', '_' and '-', each starting with a letter or digit,
# joined by single '/' ("meta-llama/Llama-3-8B"): a model id names a folder under the model
# store and nothing else (no absolute path, no '\', no empty or hidden segment).
MODEL_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*$")
# Stored errors are for people to read; a traceback's first 4000 characters say enough.
MAX_ERROR_CHARS = 4000


class PreloadStatus(StrEnum):
    QUEUED = "queued"
    LOADING = "loading"
    DONE = "done"
    FAILED = "failed"


IN_PROGRESS = frozenset({PreloadStatus.QUEUED, PreloadStatus.LOADING})
# The preload job's statuses after which it never runs again (a replay aside).
_JOB_OVER = frozenset({JobStatus.DONE, JobStatus.DEAD_LETTER, JobStatus.CANCELLED})


def model_id_problem(model_id: str) -> str | None:
    """Why `model_id` is not a usable model id, or None when it is."""
    if not model_id:
        return "a model id must not be empty"
    if len(model_id) > MAX_MODEL_ID_LENGTH:
        return f"a model id is at most {MAX_MODEL_ID_LENGTH} characters"
    if ".." in model_id:
        return "a model id must not contain '..'"
    if not MODEL_ID_PATTERN.match(model_id):
        return (
            "a model id is letters, digits, '.', '_' and '-' in segments joined by '/', each "
            "segment starting with a letter or digit (no absolute path)"
        )
    return None


def check_model_ids(model_ids: Sequence[str]) -> list[str]:
    """The ids, or `InvalidRequest`: 1..100 distinct ids that each pass `model_id_problem`."""
    if not 1 <= len(model_ids) <= MAX_PRELOAD_MODELS:
        raise InvalidRequest(
            f"give 1 to {MAX_PRELOAD_MODELS} models", limit=MAX_PRELOAD_MODELS, got=len(model_ids)
        )
    for model_id in model_ids:
        problem = model_id_problem(model_id) if isinstance(model_id, str) else "not a string"
        if problem:
            raise InvalidRequest(f"model {str(model_id)[:80]!r}: {problem}")
    if len(set(model_ids)) != len(model_ids):
        raise InvalidRequest("a model appears twice in one request")
    return list(model_ids)


@dataclass(frozen=True)
class WarmModel:
    """Model `model_id` is loaded on `node` (by worker `worker_id`)."""

    node: str
    model_id: str
    worker_id: str | None
    size_bytes: int | None
    loaded_at: datetime


@dataclass(frozen=True)
class ModelPreload:
    """The last preload request of a model, with the state of the job that carries it out."""

    model_id: str
    status: PreloadStatus
    job_id: str | None
    node: str | None
    error: str | None
    requested_at: datetime
    updated_at: datetime
    job_status: JobStatus | None = None
    job_error: str | None = None

    @property
    def state(self) -> PreloadStatus:
        """The status as the outside world should see it.

        The row is written by the worker running the preload, so on its own it can lag: a
        worker killed mid-load leaves `loading` behind, and a failed attempt says `failed`
        although the job will try again. The job's own status settles both: while the job
        can still run, the preload is in progress; once it cannot, it is done or failed.
        """
        if self.status is PreloadStatus.DONE:
            return PreloadStatus.DONE
        if self.job_status is None or self.job_status in _JOB_OVER:
            # A job that is over without the worker recording done did not load the model.
            return PreloadStatus.FAILED if self.job_id else self.status
        if self.status is PreloadStatus.FAILED:
            return PreloadStatus.QUEUED  # failed an attempt; the job retries
        return self.status

    @property
    def reason(self) -> str | None:
        """Why it failed (or why its last attempt did)."""
        if self.error:
            return self.error
        if self.state is PreloadStatus.FAILED and self.job_status is not None:
            return self.job_error or f"the preload job ended {self.job_status.value}"
        if self.state is PreloadStatus.FAILED:
            return "the preload job no longer exists"
        return None


@dataclass(frozen=True)
class ModelOverview:
    """Every preload request and every warm model, read in one transaction."""

    preloads: list[ModelPreload]
    warm: list[WarmModel]

    def warm_on(self, model_id: str) -> list[str]:
        return sorted({w.node for w in self.warm if w.model_id == model_id})

    def in_progress(self) -> list[str]:
        """The models whose preload is queued or loading (a retrying one included)."""
        return [p.model_id for p in self.preloads if p.state in IN_PROGRESS]

    def errors(self) -> dict[str, str]:
        """Why each failed preload failed, by model."""
        return {
            p.model_id: p.reason or "failed"
            for p in self.preloads
            if p.state is PreloadStatus.FAILED
        }

    def count(self, state: PreloadStatus) -> int:
        return sum(1 for p in self.preloads if p.state is state)

    def all_ready(self) -> bool:
        """Every requested model is loaded and still warm somewhere (vacuously true when
        none was requested)."""
        return all(
            p.state is PreloadStatus.DONE and self.warm_on(p.model_id) for p in self.preloads
        )


@dataclass(frozen=True)
class ModelPlacement:
    """Where model M is warm, and the subset of those nodes where a live worker serves
    job type T (so a job of type T for M could run there now)."""

    warm_on: frozenset[str] = frozenset()
    serving: frozenset[str] = frozenset()


@dataclass(frozen=True)
class ModelDemand:
    """What affinity needs to know of one job: its type, model and since when it can run."""

    job_id: str
    type: str
    model_id: str | None
    available_at: datetime


@dataclass(frozen=True)
class Skipped:
    model_id: str
    reason: Literal["warm", "in_progress"]
    status: PreloadStatus | None = None
    warm_on: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Queued:
    model_id: str
    job_id: str


@dataclass(frozen=True)
class PreloadResult:
    """What `POST /models/preload` did: the models queued (one job each) and those skipped."""

    queued: list[Queued]
    skipped: list[Skipped]
