"""The operators' dashboard: a static page at `/` and the one JSON call it refreshes from.

The page (`orchestrator/dashboard/`) is plain HTML, CSS and JavaScript shipped in the
package: no build step, nothing fetched from another origin. Every few seconds it reads
`GET /dashboard/data`, which gathers what it shows from the store in one request: GPUs with
their leases, queue depths, recent jobs, the dead-letter queue, the leader, pools and workers.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, Field

from orchestrator import __version__
from orchestrator.api.control import LeaderView, get_leader
from orchestrator.api.fleet_schemas import PoolView, WorkerView
from orchestrator.api.gpu import GpuState, gpu_state
from orchestrator.api.jobs import ERRORS
from orchestrator.api.queues import QueueView, list_queues
from orchestrator.api.schemas import PriorityLabel, utc
from orchestrator.api.security import PUBLIC, Admin
from orchestrator.errors import NotFound
from orchestrator.jobs import Job, JobStatus
from orchestrator.wiring import Services

router = APIRouter(tags=["dashboard"])

ASSETS_PACKAGE = "orchestrator.dashboard"
# The only files served, with their media types: a fixed list, so no path reaches the disk.
ASSETS = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "sections.js": "text/javascript; charset=utf-8",
    "dom.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
# The page renders job errors and agent names, which are user input: the page escapes them,
# and this policy would stop a script that slipped through from running or phoning out.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Small files: always revalidate, so an upgrade shows at the next load.
    "Cache-Control": "no-cache",
}
# Errors are up to 4000 characters; the page shows the start (the job's events have it all).
ERROR_PREVIEW_CHARS = 300
WORKERS_SHOWN = 200


class JobRow(BaseModel):
    """A job as one table row: no payload or result, and the start of its error."""

    id: str
    type: str
    status: str
    priority: PriorityLabel
    attempts: int
    max_attempts: int
    worker: str | None
    error: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    events_url: str

    @classmethod
    def of(cls, job: Job) -> JobRow:
        error = job.error
        if error is not None and len(error) > ERROR_PREVIEW_CHARS:
            error = error[: ERROR_PREVIEW_CHARS - 1] + "…"
        return cls(
            id=job.id,
            type=job.type,
            status=job.status.value,
            priority=job.priority.label,
            attempts=job.attempts,
            max_attempts=job.max_attempts,
            worker=job.worker_id,
            error=error,
            created_at=utc(job.created_at),
            updated_at=utc(job.updated_at),
            finished_at=utc(job.finished_at),
            events_url=f"/jobs/{job.id}/events",
        )


class DashboardView(BaseModel):
    generated_at: datetime = Field(description="The serving replica's clock (UTC).")
    version: str
    served_by: str = Field(description="The instance id of the replica that answered.")
    leader: LeaderView
    gpus: GpuState
    queues: list[QueueView]
    jobs: list[JobRow] = Field(description="The newest jobs, of any status.")
    dlq: list[JobRow] = Field(description="The newest dead-lettered jobs.")
    dlq_total: int
    pools: list[PoolView]
    workers: list[WorkerView] = Field(description="Workers that have not stopped.")


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


@router.get("/", include_in_schema=False, dependencies=[Depends(PUBLIC)])
def page() -> Response:
    """The dashboard page."""
    return _asset("index.html", "text/html; charset=utf-8")


@router.get("/dashboard/data", response_model=DashboardView, responses=ERRORS)
def dashboard_data(
    request: Request,
    who: Admin,
    recent: Annotated[int, Query(ge=1, le=100, description="Recent jobs to list.")] = 25,
    dead: Annotated[int, Query(ge=1, le=100, description="Dead letters to list.")] = 25,
) -> DashboardView:
    """Everything the dashboard shows, in one call (read-only)."""
    services = _services(request)
    store = services.store
    now = services.clock.now()
    stale_before = now - timedelta(seconds=services.settings.visibility_timeout_s)
    queues = list_queues(request).queues
    recent_jobs = store.list_jobs(status=None, type=None, limit=recent, cursor=None).jobs
    dead_jobs = store.list_jobs(
        status=JobStatus.DEAD_LETTER.value, type=None, limit=dead, cursor=None
    ).jobs
    workers = store.list_workers(limit=WORKERS_SHOWN)
    return DashboardView(
        generated_at=now.replace(tzinfo=UTC),
        version=__version__,
        served_by=services.engine.election.instance_id,
        leader=get_leader(request),
        gpus=gpu_state(request, who),  # an admin's view: every owner's leases
        queues=queues,
        jobs=[JobRow.of(j) for j in recent_jobs],
        dlq=[JobRow.of(j) for j in dead_jobs],
        dlq_total=sum(q.dead_letter for q in queues),
        pools=[PoolView.of(p) for p in store.list_pools(stale_before)],
        workers=[WorkerView.of(w, stale_before) for w in workers],
    )


@router.get("/dashboard/{name}", include_in_schema=False, dependencies=[Depends(PUBLIC)])
def asset(name: str) -> Response:
    """The page's script and style sheet."""
    media_type = ASSETS.get(name)
    if media_type is None:
        raise NotFound(f"no dashboard asset {name}")
    return _asset(name, media_type)


def _asset(name: str, media_type: str) -> Response:
    body = resources.files(ASSETS_PACKAGE).joinpath(name).read_bytes()
    return Response(body, media_type=media_type, headers=HEADERS)
