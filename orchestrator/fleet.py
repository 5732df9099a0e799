"""The fleet's vocabulary: worker pools, the workers that registered, and job demand.

A pool is a named, desired number of worker processes serving some job types, kept by the
node supervisor of its node (`workers/supervisor.py`) and sized by the leader's pool policy
(`orchestrator/pool_policy.py`). A worker registers itself at start and heartbeats its row,
so `GET /workers` can say what each one is doing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

POOL_NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
# Host names as they come: letters, digits, dots, dashes, underscores.
NODE_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

# Bounds that keep a typo from asking a node for ten thousand processes.
MAX_POOL_WORKERS = 1024
MAX_POOL_CONCURRENCY = 256
MAX_IDLE_TIMEOUT_S = 30 * 86400.0


class PoolStatus(StrEnum):
    ACTIVE = "active"  # its supervisors keep `desired` workers
    DRAINING = "draining"  # workers finish their jobs and exit; then `stopped`
    STOPPED = "stopped"  # no workers wanted; running ones give their jobs back and exit


class WorkerStatus(StrEnum):
    RUNNING = "running"
    DRAINING = "draining"  # stopping: finishing or giving back its jobs
    STOPPED = "stopped"  # exited cleanly
    LOST = "lost"  # no heartbeat for a visibility timeout (the leader says so)


# Statuses of a worker row that may still be a live process.
LIVE_WORKER_STATUSES = (WorkerStatus.RUNNING.value, WorkerStatus.DRAINING.value)


@dataclass(frozen=True)
class PoolSpec:
    """A validated request for a new pool."""

    name: str
    job_types: list[str]
    concurrency: int
    desired: int
    min_warm: int
    max_workers: int
    idle_timeout_s: float
    node: str | None = None
    model_id: str | None = None


@dataclass(frozen=True)
class Pool:
    """A pool as stored, with `running` counted from its live workers' rows (not the
    `running` column, which the leader refreshes and which may lag)."""

    name: str
    node: str | None
    job_types: list[str]
    model_id: str | None
    concurrency: int
    desired: int
    running: int
    min_warm: int
    max_workers: int
    idle_timeout_s: float
    status: PoolStatus
    last_busy_at: datetime | None
    created_at: datetime
    # When the pool's size, bounds or status last changed (not its `running` count).
    updated_at: datetime

    @property
    def active(self) -> bool:
        return self.status is PoolStatus.ACTIVE

    def idle_since(self) -> datetime:
        """Since when nothing gave this pool a reason to keep workers: the last time jobs
        of its types waited or ran, or the last change of its size or status."""
        busy = self.last_busy_at or self.created_at
        return max(busy, self.updated_at)


@dataclass(frozen=True)
class PoolLimits:
    """A change of a pool's autoscaling bounds; None leaves a bound as it is."""

    min_warm: int | None = None
    max_workers: int | None = None
    idle_timeout_s: float | None = None


@dataclass(frozen=True)
class WorkerRegistration:
    """What a worker process says about itself when it starts."""

    id: str
    node: str
    pool: str | None
    pid: int | None
    job_types: list[str]
    concurrency: int


@dataclass(frozen=True)
class WorkerInfo:
    """A worker's row: who it is, and what it was doing at its last heartbeat."""

    id: str
    node: str
    pool: str | None
    pid: int | None
    job_types: list[str]
    concurrency: int
    status: WorkerStatus
    current_jobs: list[str]
    started_at: datetime
    heartbeat_at: datetime
    stopped_at: datetime | None

    def alive(self, stale_before: datetime) -> bool:
        """Running or draining, with a heartbeat newer than `stale_before`."""
        return self.status.value in LIVE_WORKER_STATUSES and self.heartbeat_at >= stale_before


@dataclass(frozen=True)
class Demand:
    """Jobs of one type that want a worker: due and waiting, or running."""

    waiting: int = 0
    running: int = 0

    def __add__(self, other: Demand) -> Demand:
        return Demand(self.waiting + other.waiting, self.running + other.running)

    @property
    def busy(self) -> bool:
        return self.waiting + self.running > 0


@dataclass(frozen=True)
class PoolChange:
    """The leader's decision to resize one pool, applied as a conditional update: only
    where the pool is still active at `expected_desired`. Two leaders overlapping, or an
    operator's scale meanwhile, make it a no-op, never a lost update."""

    name: str
    expected_desired: int
    desired: int
    reason: str  # clamped | idle | demand | total_cap


@dataclass(frozen=True)
class PoolActivity:
    """Bookkeeping the leader writes each pass: the live worker count, and when jobs of
    the pool's types last waited or ran (None: not now)."""

    name: str
    running: int
    busy_at: datetime | None
