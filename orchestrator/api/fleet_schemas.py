"""The HTTP contract of pools and workers: request and response bodies."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from orchestrator.api.schemas import JobType, ModelId, utc
from orchestrator.fleet import (
    MAX_IDLE_TIMEOUT_S,
    MAX_POOL_CONCURRENCY,
    MAX_POOL_WORKERS,
    NODE_NAME_PATTERN,
    POOL_NAME_PATTERN,
    Pool,
    PoolLimits,
    PoolSpec,
    WorkerInfo,
)

PoolName = Annotated[str, Field(pattern=POOL_NAME_PATTERN.pattern, examples=["gpu-a"])]
NodeName = Annotated[str, Field(pattern=NODE_NAME_PATTERN.pattern, examples=["gpu-node-1"])]
# Strict: `true` or "2" is a mistake, not a size.
WorkerCount = Annotated[int, Field(ge=0, le=MAX_POOL_WORKERS, strict=True)]
IdleTimeout = Annotated[float, Field(gt=0, le=MAX_IDLE_TIMEOUT_S)]

DEFAULT_IDLE_TIMEOUT_S = 300.0


class CreatePoolRequest(BaseModel):
    """A new pool: `desired` workers serving `job_types`, kept by the supervisor of `node`
    (every node's supervisor when `node` is omitted), and autoscaled by the leader within
    [min_warm, max_workers]."""

    model_config = ConfigDict(extra="forbid")

    name: PoolName
    job_types: list[JobType] = Field(min_length=1, max_length=64)
    node: NodeName | None = None
    model_id: ModelId | None = None
    concurrency: Annotated[int, Field(ge=1, le=MAX_POOL_CONCURRENCY, strict=True)] | None = Field(
        None, description="Handler threads per worker. Omitted: ORCH_WORKER_CONCURRENCY."
    )
    desired: WorkerCount = 1
    min_warm: WorkerCount = Field(0, description="Workers kept however idle the pool is.")
    max_workers: Annotated[int, Field(ge=1, le=MAX_POOL_WORKERS, strict=True)] | None = Field(
        None, description="Most workers the leader scales up to. Omitted: desired (at least 1)."
    )
    idle_timeout_s: IdleTimeout = Field(
        DEFAULT_IDLE_TIMEOUT_S,
        description="With no job of its types waiting or running for this long, the pool "
        "scales down to min_warm.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> CreatePoolRequest:
        if len(set(self.job_types)) != len(self.job_types):
            raise ValueError("job_types lists a type twice")
        high = self.max_workers if self.max_workers is not None else max(self.desired, 1)
        if not self.min_warm <= self.desired <= high:
            raise ValueError(
                f"need min_warm ({self.min_warm}) <= desired ({self.desired}) "
                f"<= max_workers ({high})"
            )
        return self

    def spec(self, default_concurrency: int) -> PoolSpec:
        return PoolSpec(
            name=self.name,
            job_types=list(self.job_types),
            concurrency=self.concurrency or default_concurrency,
            desired=self.desired,
            min_warm=self.min_warm,
            max_workers=self.max_workers if self.max_workers is not None else max(self.desired, 1),
            idle_timeout_s=self.idle_timeout_s,
            node=self.node,
            model_id=self.model_id,
        )


class ScaleRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    desired: WorkerCount


class UpdatePoolRequest(BaseModel):
    """New autoscaling bounds; `desired` is clamped into them."""

    model_config = ConfigDict(extra="forbid")

    min_warm: WorkerCount | None = None
    max_workers: Annotated[int, Field(ge=1, le=MAX_POOL_WORKERS, strict=True)] | None = None
    idle_timeout_s: IdleTimeout | None = None

    @model_validator(mode="after")
    def _something(self) -> UpdatePoolRequest:
        if self.min_warm is None and self.max_workers is None and self.idle_timeout_s is None:
            raise ValueError("give min_warm, max_workers or idle_timeout_s")
        return self

    def limits(self) -> PoolLimits:
        return PoolLimits(self.min_warm, self.max_workers, self.idle_timeout_s)


class WorkerView(BaseModel):
    id: str
    node: str
    pool: str | None
    pid: int | None
    job_types: list[str]
    concurrency: int
    status: str
    current_jobs: list[str]
    started_at: datetime
    heartbeat_at: datetime
    stopped_at: datetime | None
    alive: bool = Field(description="Running or draining, and heartbeating.")

    @classmethod
    def of(cls, worker: WorkerInfo, stale_before: datetime) -> WorkerView:
        return cls(
            id=worker.id,
            node=worker.node,
            pool=worker.pool,
            pid=worker.pid,
            job_types=worker.job_types,
            concurrency=worker.concurrency,
            status=worker.status.value,
            current_jobs=worker.current_jobs,
            started_at=utc(worker.started_at),
            heartbeat_at=utc(worker.heartbeat_at),
            stopped_at=utc(worker.stopped_at),
            alive=worker.alive(stale_before),
        )


class WorkersView(BaseModel):
    workers: list[WorkerView]


class PoolView(BaseModel):
    name: str
    node: str | None
    job_types: list[str]
    model_id: str | None
    concurrency: int
    desired: int
    running: int = Field(description="Its live workers (running or draining, heartbeating).")
    min_warm: int
    max_workers: int
    idle_timeout_s: float
    status: str
    last_busy_at: datetime | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, pool: Pool) -> PoolView:
        return cls(
            name=pool.name,
            node=pool.node,
            job_types=pool.job_types,
            model_id=pool.model_id,
            concurrency=pool.concurrency,
            desired=pool.desired,
            running=pool.running,
            min_warm=pool.min_warm,
            max_workers=pool.max_workers,
            idle_timeout_s=pool.idle_timeout_s,
            status=pool.status.value,
            last_busy_at=utc(pool.last_busy_at),
            created_at=utc(pool.created_at),
            updated_at=utc(pool.updated_at),
        )


class PoolDetailView(PoolView):
    workers: list[WorkerView] = Field(description="Its workers that have not stopped.")


class PoolsView(BaseModel):
    pools: list[PoolView]


class PolicyReportView(BaseModel):
    resized: dict[str, int] = Field(description="Pools resized, with their new desired.")
    lost_workers: list[str]
    stopped_pools: list[str]
    pruned_workers: int
