"""A job's GPU lease, from the worker's side: take it before the handler, heartbeat it with
the job, release it after, success or failure.

A job that cannot get a lease within `job_lease_wait_s` is given back (the attempt does not
count) rather than hold a slot; its lease request keeps the job's submit time as its place
in the queue, so it loses nothing by waiting outside.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from orchestrator.errors import OrchestratorError
from orchestrator.jobs import Claim
from orchestrator.lease_service import LeaseService
from orchestrator.leases import Lease, LeaseOutcome, LeaseRequest
from orchestrator.settings import Settings

logger = logging.getLogger(__name__)


class JobGpus:
    def __init__(self, leases: LeaseService, node: str, settings: Settings) -> None:
        self.leases = leases
        self.node = node
        self.settings = settings

    @property
    def ttl_s(self) -> float:
        """As long as a job may go unheartbeated: a lease outlives its job's heartbeats."""
        return max(self.settings.visibility_timeout_s, 3 * self.settings.heartbeat_interval_s)

    def acquire(self, claim: Claim, abandon: Callable[[], bool]) -> LeaseOutcome:
        """A lease on this node for the claimed job, waiting a while for one. The wait stays
        well inside the visibility timeout: the job is not heartbeated meanwhile."""
        job = claim.job
        assert job.gpu is not None
        wait_s = min(self.settings.job_lease_wait_s, self.settings.visibility_timeout_s / 2)
        return self.leases.acquire(
            LeaseRequest(
                agent=job.owner,
                est_vram_mb=job.gpu.est_vram_mb,
                gpu_count=job.gpu.gpu_count,
                ttl_s=self.ttl_s,
                priority=job.priority,
                wait_s=wait_s,
                operation=job.type,
                model_id=job.gpu.model_id,
                job_id=job.id,
                node=self.node,
                queued_at=job.created_at,
            ),
            abandon=abandon,
        )

    def release(self, lease: Lease, *, peak_vram_mb: int | None, success: bool) -> None:
        """Never raises: a lease not released expires by itself after its ttl."""
        try:
            self.leases.release(lease.token, peak_vram_mb=peak_vram_mb, success=success)
        except OrchestratorError as exc:
            logger.error(
                "job %s: could not release its GPU lease (%s); it expires in %gs",
                lease.job_id,
                exc,
                lease.ttl_s,
                extra={"event": "lease_release_failed", "job_id": lease.job_id},
            )
