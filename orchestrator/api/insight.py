"""Routes that answer "why is my job waiting?" and steer the queue: explain a job, queue
statistics, and moving a waiting job to another priority band."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from orchestrator.api.jobs import ERRORS
from orchestrator.api.schemas import JobType, JobView
from orchestrator.api.security import ANY_ROLE, Submitter
from orchestrator.insight import MAX_WINDOW_S, InsightService
from orchestrator.jobs import Priority
from orchestrator.wiring import Services

router = APIRouter(tags=["jobs"])


def _insight(request: Request) -> InsightService:
    services: Services = request.app.state.services
    return InsightService(services.store, services.streams, services.settings, services.clock)


class ReasonView(BaseModel):
    """One reason; details (ahead counts, lease holders, times) vary with `code`."""

    model_config = ConfigDict(extra="allow")

    code: str = Field(
        description="Stable: running, claimed, finished, queue_position, unpublished, "
        "delayed, retry_backoff, lease_retry, no_worker, safe_mode, lease_waiting, "
        "gpu_capacity, gpu_available, gpu_degraded, no_gpus, exceeds_capacity, quota, "
        "device_quarantined, cancel_requested, model_warm, model_not_served, model_cold "
        "(docs/api.md)."
    )
    message: str
    blocking: bool = Field(description="The job cannot run until this goes away.")


class ExplainView(BaseModel):
    job_id: str
    status: str
    runnable: bool = Field(
        description="Nothing blocks it: it runs (or runs as soon as its turn comes)."
    )
    reasons: list[ReasonView]
    summary: str = Field(description="The reasons in one sentence.")


@router.get("/jobs/{job_id}/explain", response_model=ExplainView, responses=ERRORS)
def explain_job(job_id: str, request: Request, who: Submitter) -> dict[str, Any]:
    """Why the job is not running yet, in plain words (or that it runs, or has finished):
    its place in its queue and band, a delay or retry backoff, the GPU lease it waits for
    and the leases holding that capacity, quotas and fair share, missing workers,
    quarantined devices, SAFE_MODE. A submitter sees only its own jobs (404 otherwise)."""
    insight = _insight(request)
    job = request.app.state.services.jobs.get(job_id, who.sees_owner)
    return insight.explain(job, sees_all=who.is_admin).as_dict()


class PriorityRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    priority: Literal["critical", "high", "normal", "low"]


@router.patch("/jobs/{job_id}/priority", response_model=JobView, responses=ERRORS)
def set_priority(job_id: str, body: PriorityRequest, request: Request, who: Submitter) -> JobView:
    """Move a waiting job (`pending`, or `failed` awaiting its retry) to another band; it
    is delivered once, in the new band. 409 for a job that is claimed, running or
    finished; 404 for an unknown job (or another owner's)."""
    services: Services = request.app.state.services
    services.jobs.get(job_id, who.sees_owner)
    job = _insight(request).reprioritise(job_id, Priority.from_label(body.priority), who.owner)
    return JobView.of(job)


class QueueStatisticsView(BaseModel):
    type: str
    pending: int = Field(description="Waiting jobs (pending and failed), delayed ones too.")
    pending_by_band: dict[str, int] = Field(description="Every band present.")
    running: int = Field(description="Claimed or running now.")
    claimed_in_window: int = Field(
        description="Jobs submitted in the window that have started running."
    )
    avg_wait_s: float | None = Field(
        description="Due (run_at, else submit) to first start, the jobs still waiting counted "
        "with their wait so far; None: no sample."
    )
    p95_wait_s: float | None
    waiting_in_window: int = Field(
        description="Jobs submitted in the window, due, that have not started yet."
    )
    oldest_wait_s: float | None = Field(
        description="The longest wait so far of a job that never started (any submit time)."
    )
    throughput_per_hour: int = Field(description="Jobs that finished in the last hour.")
    done: int = Field(description="Finished in the window, successfully.")
    dead_letter: int
    cancelled: int
    success_rate: float | None = Field(
        description="done / (done + dead_letter) in the window; None when neither."
    )


class StatisticsView(BaseModel):
    window_s: float
    queues: list[QueueStatisticsView]


@router.get(
    "/queue/statistics",
    response_model=StatisticsView,
    responses=ERRORS,
    dependencies=[Depends(ANY_ROLE)],
)
def queue_statistics(
    request: Request,
    type: Annotated[JobType | None, Query()] = None,
    window_s: Annotated[float, Query(gt=0, le=MAX_WINDOW_S)] = 3600.0,
) -> StatisticsView:
    """Per job type: depth by band, running, average and p95 wait (submit to first claim)
    and outcomes over the window, throughput over the last hour. Counts only: no owner's
    jobs are named, so every role may read it."""
    summaries = _insight(request).statistics(type, window_s)
    return StatisticsView(
        window_s=window_s,
        queues=[QueueStatisticsView(**vars(s)) for s in summaries],
    )
