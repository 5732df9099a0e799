"""A job's GPU lease, from the worker's side: take it before the handler, heartbeat it with
the job, release it after, success or failure.

A job that cannot get a lease within `job_lease_wait_s` is given back (the attempt does not
count) rather than hold a slot; its lease request keeps the job's submit time as its place
in the queue, so it loses nothing by waiting outside.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from orchestrator.errors import OrchestratorError, Unavailable
from orchestrator.jobs import Claim
from orchestrator.lease_service import LeaseService
from orchestrator.leases import DenyReason, Lease, LeaseOutcome, LeaseRequest
from orchestrator.settings import Settings
from orchestrator.streams import Delivery
from workers.context import GpuAssignment
from workers.observer import GIVEN_BACK_GPU
from workers.outcomes import OutcomeRecorder

logger = logging.getLogger(__name__)

# The longest a job waiting for GPUs stays away between two offers.
MAX_RETRY_S = 60.0


class JobGpus:
    def __init__(
        self,
        leases: LeaseService,
        node: str,
        settings: Settings,
        *,
        outcomes: OutcomeRecorder,
        on_outage: Callable[[Exception], None],
    ) -> None:
        self.leases = leases
        self.store = leases.store
        self.node = node
        self.settings = settings
        self.outcomes = outcomes
        self._on_outage = on_outage

    def take(self, claim: Claim, delivery: Delivery, abandon: Callable[[], bool]) -> Lease | None:
        """The claimed job's lease on this node, with the job marked running; None once the
        job was given back (no room yet), failed (it can never fit here) or lost."""
        outcome = None
        try:
            outcome = self.acquire(claim, abandon)
            if outcome.granted:
                lease = outcome.lease
                assert lease is not None
                detail = {"node": lease.node, "devices": list(lease.devices), "lease": lease.token}
                if self.store.mark_running(claim, self.leases.clock.now(), detail):
                    return lease
                # Cancelled while it waited (it ends cancelled), or reclaimed meanwhile (a
                # newer attempt owns the job: the store fences this one off). Then acked.
                self.release(lease, peak_vram_mb=None, success=False)
                self.outcomes.record(claim, delivery, "cancelled", None)
                return None
        except Unavailable as exc:
            self._on_outage(exc)
        denial = outcome.denial if outcome is not None else None
        # Too big for this node, but another could hold it: a worker there may take it.
        elsewhere = (
            denial is not None
            and denial.reason is DenyReason.EXCEEDS_CAPACITY
            and self._fits_elsewhere(claim)
        )
        if denial is not None and denial.final and not elsewhere:
            self.outcomes.record(
                claim, delivery, "error", f"cannot get a GPU lease: {denial.message}"
            )
            return None
        why = denial.message if denial is not None else "the database did not answer"
        self.give_back(claim, delivery, f"waiting for a GPU lease: {why}")
        return None

    def give_back(
        self,
        claim: Claim,
        delivery: Delivery,
        reason: str,
        delay_s: float | None = None,
        kind: str = GIVEN_BACK_GPU,
    ) -> None:
        """Not started, not failed: the job is offered again after `delay_s` (default
        `job_lease_retry_s`), its attempt not counted. `kind` is the reason's name for the
        observer (workers/observer.py)."""
        delay = self._retry_delay(claim) if delay_s is None else delay_s
        try:
            self.store.release_job(claim, self.leases.clock.now(), delay_s=delay, reason=reason)
        except Unavailable as exc:
            # Left claimed and unacked: the reclaimer requeues it after the visibility timeout.
            self._on_outage(exc)
            return
        logger.info(
            "job %s given back: %s",
            claim.job.id,
            reason,
            extra={"event": "job_given_back", "job_id": claim.job.id, "attempt": claim.attempt},
        )
        self.outcomes.observer.job_given_back(claim, kind)
        self.outcomes.ack(delivery)

    def _retry_delay(self, claim: Claim) -> float:
        """Offered again soon at first, then less often the longer the job has waited
        (a quarter of its age, at most a minute): a job that waits for GPUs for long
        does not churn claims and events every second."""
        age = (self.leases.clock.now() - claim.job.created_at).total_seconds()
        return max(self.settings.job_lease_retry_s, min(MAX_RETRY_S, age / 4))

    def _fits_elsewhere(self, claim: Claim) -> bool:
        """Whether a node other than this one could ever hold the job's lease."""
        gpu = claim.job.gpu
        assert gpu is not None
        try:
            return bool(
                self.leases.nodes_that_could_hold(gpu.est_vram_mb, gpu.gpu_count) - {self.node}
            )
        except Unavailable:
            return True  # unknown: keep the job rather than fail it

    def assignment(self, lease: Lease | None) -> GpuAssignment | None:
        """What the handler sees of its lease."""
        if lease is None:
            return None
        return GpuAssignment(lease.node or self.node, lease.devices, lease.token, lease.est_vram_mb)

    @property
    def ttl_s(self) -> float:
        """As long as a job may go unheartbeated: a lease outlives its job's heartbeats."""
        s = self.settings
        return min(max(s.visibility_timeout_s, 3 * s.heartbeat_interval_s), s.lease_max_ttl_s)

    def acquire(self, claim: Claim, abandon: Callable[[], bool]) -> LeaseOutcome:
        """A lease on this node for the claimed job, waiting a while for one. The wait stays
        well inside the visibility timeout: the job is not heartbeated meanwhile."""
        job = claim.job
        assert job.gpu is not None
        s = self.settings
        wait_s = min(s.job_lease_wait_s, s.visibility_timeout_s / 2, s.lease_max_wait_s)
        return self.leases.acquire(
            LeaseRequest(
                agent=job.owner,
                owner=job.owner,
                est_vram_mb=job.gpu.est_vram_mb,
                gpu_count=job.gpu.gpu_count,
                ttl_s=self.ttl_s,
                priority=job.priority,
                wait_s=wait_s,
                operation=job.type,
                model_id=job.gpu.model_id,
                job_id=job.id,
                estimated_duration_s=job.gpu.estimated_duration_s,
                node=self.node,
                queued_at=job.created_at,
                avoid=job.gpu.avoid,
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
