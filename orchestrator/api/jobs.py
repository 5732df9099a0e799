"""Routes for jobs: submit, read, list, events, cancel."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from orchestrator.api.schemas import (
    BatchItem,
    ErrorBody,
    EventsView,
    EventView,
    JobPageView,
    JobType,
    JobView,
    SubmitBatchRequest,
    SubmitBatchResponse,
    SubmitRequest,
    SubmitResponse,
)
from orchestrator.jobs import JobStatus
from orchestrator.service import JobService

router = APIRouter(tags=["jobs"])

# A job id, as GET /jobs returns in `next_cursor`.
JOB_ID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"

ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody},
    409: {"model": ErrorBody},
    413: {"model": ErrorBody},
    422: {"model": ErrorBody},
    503: {"model": ErrorBody},
}


def _jobs(request: Request) -> JobService:
    service: JobService = request.app.state.services.jobs
    return service


@router.post("/jobs/submit", status_code=202, response_model=SubmitResponse, responses=ERRORS)
def submit(body: SubmitRequest, request: Request, response: Response) -> SubmitResponse:
    """Submit one job. 202 when created; 200 with the same job when the idempotency key and
    body match an earlier submit; 409 when the key was used for another body."""
    (submitted,) = _jobs(request).submit([body])
    if not submitted.created:
        response.status_code = 200
    return SubmitResponse(job_id=submitted.job.id, status=submitted.job.status.value)


@router.post(
    "/jobs/submit_batch", status_code=202, response_model=SubmitBatchResponse, responses=ERRORS
)
def submit_batch(body: SubmitBatchRequest, request: Request) -> SubmitBatchResponse:
    """Submit many jobs at once, all or nothing."""
    submitted = _jobs(request).submit(body.jobs)
    return SubmitBatchResponse(
        jobs=[
            BatchItem(job_id=s.job.id, status=s.job.status.value, created=s.created)
            for s in submitted
        ]
    )


@router.get("/jobs/{job_id}", response_model=JobView, responses=ERRORS)
def get_job(job_id: str, request: Request) -> JobView:
    return JobView.of(_jobs(request).get(job_id))


@router.get("/jobs", response_model=JobPageView, responses=ERRORS)
def list_jobs(
    request: Request,
    status: JobStatus | None = None,
    type: Annotated[JobType | None, Query()] = None,
    limit: Annotated[int, Query(ge=1)] = 50,
    cursor: Annotated[str | None, Query(pattern=JOB_ID_PATTERN)] = None,
) -> JobPageView:
    """Jobs, newest first; pass `next_cursor` back as `cursor` for the next page."""
    service = _jobs(request)
    limit = min(limit, service.settings.max_page_size)
    page = service.list_jobs(
        status=status.value if status else None, type=type, limit=limit, cursor=cursor
    )
    return JobPageView(jobs=[JobView.of(j) for j in page.jobs], next_cursor=page.next_cursor)


@router.get("/jobs/{job_id}/events", response_model=EventsView, responses=ERRORS)
def job_events(job_id: str, request: Request) -> EventsView:
    """The job's audit trail: every status change with its time, actor and detail."""
    events = _jobs(request).events(job_id)
    return EventsView(job_id=job_id, events=[EventView.of(e) for e in events])


@router.post("/jobs/{job_id}/cancel", response_model=JobView, responses=ERRORS)
def cancel_job(job_id: str, request: Request, response: Response) -> JobView:
    """Cancel a waiting job (200, `cancelled`), or ask a running one to stop (202; it ends
    `cancelled`). A finished job answers 409."""
    job = _jobs(request).cancel(job_id)
    if not job.is_terminal:
        response.status_code = 202
    return JobView.of(job)
