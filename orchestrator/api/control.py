"""Routes for operators: the leadership, reclaiming, and the dead-letter queue."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel

from orchestrator.api.jobs import ERRORS, JOB_ID_PATTERN
from orchestrator.api.schemas import JobType, JobView, utc
from orchestrator.api.security import ADMIN, ANY_ROLE, Admin
from orchestrator.jobs import JobStatus
from orchestrator.wiring import Services

router = APIRouter(tags=["control"])


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


class LeaderView(BaseModel):
    is_leader: bool
    leader_id: str | None
    epoch: int
    since: datetime | None
    expires_at: datetime | None
    instance_id: str


class ReclaimView(BaseModel):
    scanned: int
    requeued: int
    dead_lettered: int
    republished: int


class DeadLetterView(BaseModel):
    jobs: list[JobView]
    next_cursor: str | None


@router.get("/leader", response_model=LeaderView, dependencies=[Depends(ANY_ROLE)])
def get_leader(request: Request) -> LeaderView:
    """Which replica leads (runs the engine's loops), since when, and its epoch."""
    election = _services(request).engine.election
    current = election.current()
    return LeaderView(
        is_leader=election.leading,
        leader_id=current.leader_id,
        epoch=current.epoch,
        since=utc(current.since),
        expires_at=utc(current.expires_at),
        instance_id=election.instance_id,
    )


@router.post(
    "/control/reclaim",
    response_model=ReclaimView,
    responses=ERRORS,
    dependencies=[Depends(ADMIN)],
)
def reclaim(request: Request) -> ReclaimView:
    """Run one reclaim pass now, on this replica (safe on any replica at any time)."""
    report = _services(request).reclaimer.reclaim()
    return ReclaimView(**report.as_dict())


@router.get("/dlq", response_model=DeadLetterView, responses=ERRORS, dependencies=[Depends(ADMIN)])
def list_dead_letters(
    request: Request,
    type: Annotated[JobType | None, Query()] = None,
    limit: Annotated[int, Query(ge=1)] = 50,
    cursor: Annotated[str | None, Query(pattern=JOB_ID_PATTERN)] = None,
) -> DeadLetterView:
    """Dead-lettered jobs, newest first, each with its last error."""
    services = _services(request)
    page = services.jobs.list_jobs(
        status=JobStatus.DEAD_LETTER.value,
        type=type,
        limit=min(limit, services.settings.max_page_size),
        cursor=cursor,
    )
    return DeadLetterView(jobs=[JobView.of(j) for j in page.jobs], next_cursor=page.next_cursor)


@router.post("/dlq/{job_id}/replay", response_model=JobView, responses=ERRORS)
def replay_dead_letter(job_id: str, request: Request, who: Admin) -> JobView:
    """Make a dead-lettered job pending again, with a fresh attempt budget."""
    return JobView.of(_services(request).jobs.replay(job_id, who.owner))
