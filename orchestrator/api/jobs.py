"""Routes for jobs: submit, read, list, events, cancel."""

from __future__ import annotations

import functools
from collections.abc import Callable
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
from orchestrator.api.security import Submitter
from orchestrator.auth import Principal
from orchestrator.jobs import JobStatus
from orchestrator.rate_limit import SubmitRateLimit
from orchestrator.service import JobService

router = APIRouter(tags=["jobs"])

# A job id, as GET /jobs returns in `next_cursor`.
JOB_ID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody},
    403: {"model": ErrorBody},
    404: {"model": ErrorBody},
    409: {"model": ErrorBody},
    413: {"model": ErrorBody},
    422: {"model": ErrorBody},
    429: {"model": ErrorBody},
    503: {"model": ErrorBody},
}


def _jobs(request: Request) -> JobService:
    service: JobService = request.app.state.services.jobs
    return service


def rate_limit(request: Request, who: Principal) -> Callable[[int], None]:
    """Charges n jobs to the caller's submit rate limit (429 over it): `JobService.submit`
    calls it once the request is valid, before writing."""
    limit: SubmitRateLimit = request.app.state.services.submit_limit
    return functools.partial(limit.take, who.owner)


@router.post(
    "/jobs/submit",
    status_code=202,
    response_model=SubmitResponse,
    responses={
        **ERRORS,
        200: {"model": SubmitResponse, "description": "An idempotent repeat: the same job."},
    },
)
def submit(
    body: SubmitRequest, request: Request, response: Response, who: Submitter
) -> SubmitResponse:
    """Submit one job. 202 when created; 200 with the same job when the idempotency key and
    body match an earlier submit; 409 when the key was used for another body; 429 over the
    owner's submit rate (see `Retry-After`)."""
    (submitted,) = _jobs(request).submit([body], who.owner, charge=rate_limit(request, who))
    if not submitted.created:
        response.status_code = 200
    return SubmitResponse(job_id=submitted.job.id, status=submitted.job.status.value)


@router.post(
    "/jobs/submit_batch", status_code=202, response_model=SubmitBatchResponse, responses=ERRORS
)
def submit_batch(body: SubmitBatchRequest, request: Request, who: Submitter) -> SubmitBatchResponse:
    """Submit many jobs at once, all or nothing (n jobs count n against the rate limit)."""
    submitted = _jobs(request).submit(body.jobs, who.owner, charge=rate_limit(request, who))
    return SubmitBatchResponse(
        jobs=[
            BatchItem(job_id=s.job.id, status=s.job.status.value, created=s.created)
            for s in submitted
        ]
    )


@router.get("/jobs/{job_id}", response_model=JobView, responses=ERRORS)
def get_job(job_id: str, request: Request, who: Submitter) -> JobView:
    """The job (a submitter's own only: another owner's job is 404)."""
    return JobView.of(_jobs(request).get(job_id, who.sees_owner))


@router.get("/jobs", response_model=JobPageView, responses=ERRORS)
def list_jobs(
    request: Request,
    who: Submitter,
    status: JobStatus | None = None,
    type: Annotated[JobType | None, Query()] = None,
    limit: Annotated[int, Query(ge=1)] = 50,
    cursor: Annotated[str | None, Query(pattern=JOB_ID_PATTERN)] = None,
) -> JobPageView:
    """Jobs, newest first (a submitter's own only); pass `next_cursor` back as `cursor` for
    the next page."""
    service = _jobs(request)
    limit = min(limit, service.settings.max_page_size)
    page = service.list_jobs(
        status=status.value if status else None,
        type=type,
        limit=limit,
        cursor=cursor,
        owner=who.sees_owner,
    )
    return JobPageView(jobs=[JobView.of(j) for j in page.jobs], next_cursor=page.next_cursor)


@router.get("/jobs/{job_id}/events", response_model=EventsView, responses=ERRORS)
def job_events(job_id: str, request: Request, who: Submitter) -> EventsView:
    """The job's audit trail: every status change with its time, actor and detail."""
    events = _jobs(request).events(job_id, who.sees_owner)
    return EventsView(job_id=job_id, events=[EventView.of(e) for e in events])


@router.post(
    "/jobs/{job_id}/cancel",
    response_model=JobView,
    responses={**ERRORS, 202: {"model": JobView, "description": "Asked a running job to stop."}},
)
def cancel_job(job_id: str, request: Request, response: Response, who: Submitter) -> JobView:
    """Cancel a waiting job (200, `cancelled`), or ask a running one to stop (202; it ends
    `cancelled`). A finished job answers 409."""
    job = _jobs(request).cancel(job_id, who.owner, who.sees_owner)
    if not job.is_terminal:
        response.status_code = 202
    return JobView.of(job)
