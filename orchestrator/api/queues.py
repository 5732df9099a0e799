"""`GET /queues`: how many jobs wait, run and lie dead-lettered, per job type.

The same counts as the `gpu_orchestrator_job_queue_depth` gauge, as JSON for the CLI and
dashboards that do not scrape Prometheus.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from orchestrator.api.jobs import ERRORS
from orchestrator.api.security import ANY_ROLE
from orchestrator.jobs import JobStatus, Priority
from orchestrator.wiring import Services

router = APIRouter(tags=["control"])

# The statuses a job waits in for a worker: `failed` is waiting out its retry delay.
WAITING = (JobStatus.PENDING.value, JobStatus.FAILED.value)


class QueueView(BaseModel):
    type: str
    pending: int = Field(0, description="Waiting for a worker (delayed jobs included).")
    failed: int = Field(0, description="An attempt failed; waiting out the retry delay.")
    claimed: int = Field(0, description="Claimed by a worker, waiting for its GPU lease.")
    running: int = 0
    dead_letter: int = 0
    by_priority: dict[str, int] = Field(
        description="Waiting jobs (pending and failed) per priority band, every band present."
    )


class QueuesView(BaseModel):
    queues: list[QueueView] = Field(description="One entry per job type with any such job.")


@router.get(
    "/queues", response_model=QueuesView, responses=ERRORS, dependencies=[Depends(ANY_ROLE)]
)
def list_queues(request: Request) -> QueuesView:
    """Unfinished and dead-lettered jobs per type: by status, and waiting ones by band."""
    services: Services = request.app.state.services
    counts: dict[str, dict[str, int]] = {}
    bands: dict[str, dict[str, int]] = {}
    for job_type, status, band, count in services.store.queue_depths():
        by_status = counts.setdefault(job_type, {})
        by_status[status] = by_status.get(status, 0) + count
        by_band = bands.setdefault(job_type, {p.label: 0 for p in Priority})
        if status in WAITING:
            by_band[band.label] += count
    return QueuesView(
        queues=[
            QueueView(type=job_type, by_priority=bands[job_type], **counts[job_type])
            for job_type in sorted(counts)
        ]
    )
