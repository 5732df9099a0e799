"""The job's vocabulary: statuses, priority bands, what a submit asks for, what a job is."""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass, field
from datetime import datetime
from enum import IntEnum, StrEnum
from typing import Any

JOB_TYPE_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


class JobStatus(StrEnum):
    PENDING = "pending"
    CLAIMED = "claimed"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"  # an attempt failed; retried after backoff while attempts remain
    DEAD_LETTER = "dead_letter"
    CANCELLED = "cancelled"


TERMINAL_STATUSES = frozenset({JobStatus.DONE, JobStatus.DEAD_LETTER, JobStatus.CANCELLED})
# Statuses from which a published message may claim the job.
CLAIMABLE_STATUSES = (JobStatus.PENDING.value, JobStatus.FAILED.value)
ACTIVE_STATUSES = (JobStatus.CLAIMED.value, JobStatus.RUNNING.value)

LOST_WORKER_ERROR = "worker lost: no heartbeat within the visibility timeout"


class Priority(IntEnum):
    """Priority bands; a lower value runs first."""

    CRITICAL = 0
    HIGH = 1
    NORMAL = 2
    LOW = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def from_label(cls, label: str) -> Priority:
        return cls[label.upper()]


@dataclass(frozen=True)
class GpuNeeds:
    """The GPU lease a job's handler needs: `est_vram_mb` on each of `gpu_count` devices."""

    est_vram_mb: int
    gpu_count: int = 1
    model_id: str | None = None
    # (node, index) of devices an attempt ran out of memory on: the next one prefers others.
    avoid: tuple[tuple[str, int], ...] = ()
    # How long the handler holds its lease, when the submitter knows (`shortest_first`).
    estimated_duration_s: float | None = None

    def as_dict(self) -> dict[str, Any]:
        value: dict[str, Any] = {
            "est_vram_mb": self.est_vram_mb,
            "gpu_count": self.gpu_count,
            "model_id": self.model_id,
        }
        if self.avoid:
            value["avoid"] = [[node, index] for node, index in self.avoid]
        if self.estimated_duration_s is not None:
            value["estimated_duration_s"] = self.estimated_duration_s
        return value

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> GpuNeeds:
        avoid = tuple((str(node), int(index)) for node, index in value.get("avoid") or ())
        duration = value.get("estimated_duration_s")
        return cls(
            int(value["est_vram_mb"]),
            int(value.get("gpu_count", 1)),
            value.get("model_id"),
            avoid,
            None if duration is None else float(duration),
        )


@dataclass(frozen=True)
class JobSpec:
    """A validated request for one job, ready to store."""

    type: str
    payload: Any
    priority: Priority
    max_attempts: int
    timeout_s: float
    available_at: datetime
    idempotency_key: str | None
    request_hash: str | None  # what an idempotent retry is compared by; None without a key
    owner: str = "anonymous"
    gpu: GpuNeeds | None = None


@dataclass(frozen=True)
class Job:
    """A job as stored."""

    id: str
    type: str
    status: JobStatus
    priority: Priority
    payload: Any
    attempts: int
    max_attempts: int
    timeout_s: float
    owner: str
    idempotency_key: str | None
    created_at: datetime
    updated_at: datetime
    available_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    heartbeat_at: datetime | None = None
    worker_id: str | None = None
    result: Any = None
    error: str | None = None
    progress: Any = None
    cancel_requested: bool = False
    gpu: GpuNeeds | None = None

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


@dataclass(frozen=True)
class JobEvent:
    """One entry of a job's audit trail."""

    id: int
    job_id: str
    at: datetime
    event: str
    status: str | None
    attempt: int
    actor: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Dispatch:
    """What a stream message says: run attempt `attempt` of job `job_id`."""

    job_id: str
    type: str
    priority: Priority
    attempt: int


@dataclass(frozen=True)
class Claim:
    """A worker's hold on one attempt of a job; `token` fences every later write."""

    job: Job
    token: str
    attempt: int


def request_hash(body: dict[str, Any]) -> str:
    """A stable digest of a submit body, to tell an idempotent retry from a conflicting reuse."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def retry_delay_s(
    attempt: int, base_s: float, max_s: float, rng: random.Random | None = None
) -> float:
    """Exponential backoff with full jitter over the upper half: base*2^(n-1), capped."""
    ceiling = min(max_s, base_s * 2.0 ** max(attempt - 1, 0))
    jitter: float = (rng or random).uniform(0.5, 1.0)
    return ceiling * jitter
