"""The HTTP contract: request and response bodies."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from orchestrator.input_limits import MAX_BATCH_SIZE, MAX_DELAY_S
from orchestrator.jobs import JOB_TYPE_PATTERN, GpuNeeds, Job, JobEvent
from orchestrator.models import MAX_MODEL_ID_LENGTH, model_id_problem

PriorityLabel = Literal["critical", "high", "normal", "low"]
JobType = Annotated[str, Field(pattern=JOB_TYPE_PATTERN.pattern, examples=["inference_jobs"])]


def _valid_model_id(value: str) -> str:
    problem = model_id_problem(value)
    if problem:
        raise ValueError(problem)
    return value


# The ids preloads take (a folder under the model store): a job, pool or agent naming one that
# can never be warm is a mistake.
ModelId = Annotated[
    str,
    Field(min_length=1, max_length=MAX_MODEL_ID_LENGTH, examples=["meta-llama/Llama-3-8B"]),
    AfterValidator(_valid_model_id),
]


class GpuRequest(BaseModel):
    """The GPU lease a job's handler needs; a worker takes it on its node before the
    handler runs, and releases it after."""

    model_config = ConfigDict(extra="forbid")

    est_vram_mb: Annotated[int, Field(ge=1, le=16 << 20)] = Field(
        description="VRAM needed on each device, in MB."
    )
    gpu_count: Annotated[int, Field(ge=1, le=16)] = 1
    model_id: ModelId | None = None
    estimated_duration_s: Annotated[float, Field(gt=0, le=366 * 86400)] | None = Field(
        None, description="How long the handler holds its lease: the shortest_first policy."
    )

    def needs(self) -> GpuNeeds:
        return GpuNeeds(
            self.est_vram_mb,
            self.gpu_count,
            self.model_id,
            estimated_duration_s=self.estimated_duration_s,
        )


class SubmitRequest(BaseModel):
    """One job to run. Everything but `type` is optional."""

    model_config = ConfigDict(extra="forbid")

    type: JobType
    payload: Any = Field(default_factory=dict)
    priority: PriorityLabel = "normal"
    idempotency_key: Annotated[str, Field(min_length=1, max_length=255)] | None = None
    max_attempts: Annotated[int, Field(ge=1, le=100)] | None = None
    timeout_s: Annotated[float, Field(gt=0)] | None = None
    run_at: datetime | None = Field(None, description="ISO-8601; without an offset, UTC.")
    # The absolute bound; ORCH_MAX_DELAY_S can narrow it, and bounds run_at too.
    delay_s: Annotated[float, Field(ge=0, le=MAX_DELAY_S)] | None = None
    gpu: GpuRequest | None = None

    @field_validator("run_at")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        """Stored as naive UTC; a time without an offset is taken as UTC."""
        if value is None or value.tzinfo is None:
            return value
        try:
            return value.astimezone(UTC).replace(tzinfo=None)
        except OverflowError:
            raise ValueError("run_at is out of range") from None

    @model_validator(mode="after")
    def _one_schedule(self) -> SubmitRequest:
        if self.run_at is not None and self.delay_s is not None:
            raise ValueError("give run_at or delay_s, not both")
        return self


class SubmitBatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # ORCH_MAX_BATCH_SIZE (checked by the service) can only narrow this; this bound is
    # checked before any item is built, so an oversized batch costs no per-job models.
    jobs: list[SubmitRequest] = Field(min_length=1, max_length=MAX_BATCH_SIZE)


class SubmitResponse(BaseModel):
    job_id: str
    status: str


class BatchItem(BaseModel):
    job_id: str
    status: str
    created: bool


class SubmitBatchResponse(BaseModel):
    jobs: list[BatchItem]


class JobView(BaseModel):
    id: str
    type: str
    status: str
    priority: PriorityLabel
    payload: Any
    attempts: int
    max_attempts: int
    timeout_s: float
    owner: str
    idempotency_key: str | None
    result: Any
    error: str | None
    progress: Any
    worker: str | None
    cancel_requested: bool
    created_at: datetime
    updated_at: datetime
    available_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    gpu: dict[str, Any] | None = None

    @classmethod
    def of(cls, job: Job) -> JobView:
        return cls(
            id=job.id,
            type=job.type,
            status=job.status.value,
            priority=job.priority.label,
            payload=job.payload,
            attempts=job.attempts,
            max_attempts=job.max_attempts,
            timeout_s=job.timeout_s,
            owner=job.owner,
            idempotency_key=job.idempotency_key,
            result=job.result,
            error=job.error,
            progress=job.progress,
            worker=job.worker_id,
            cancel_requested=job.cancel_requested,
            created_at=utc(job.created_at),
            updated_at=utc(job.updated_at),
            available_at=utc(job.available_at),
            started_at=utc(job.started_at),
            finished_at=utc(job.finished_at),
            heartbeat_at=utc(job.heartbeat_at),
            gpu=job.gpu.as_dict() if job.gpu else None,
        )


class JobPageView(BaseModel):
    jobs: list[JobView]
    next_cursor: str | None


class EventView(BaseModel):
    id: int
    at: datetime
    event: str
    status: str | None
    attempt: int
    actor: str
    detail: dict[str, Any]

    @classmethod
    def of(cls, event: JobEvent) -> EventView:
        return cls(
            id=event.id,
            at=utc(event.at),
            event=event.event,
            status=event.status,
            attempt=event.attempt,
            actor=event.actor,
            detail=event.detail,
        )


class EventsView(BaseModel):
    job_id: str
    events: list[EventView]


class ErrorBody(BaseModel):
    error: str
    message: str
    details: Any = None


def utc(value: datetime | None) -> datetime | None:
    """Stored times are naive UTC; say so on the wire."""
    return None if value is None else value.replace(tzinfo=UTC)
