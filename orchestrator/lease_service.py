"""`LeaseService`: what the API and workers do with GPU leases, independent of HTTP.

It validates requests against the settings, holds a waiting request's caller until it is
granted or its `wait_s` runs out, keeps the lease metrics, and runs the leader's sweep.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from orchestrator.admission import Book, Limits
from orchestrator.clock import Clock
from orchestrator.errors import Conflict, InvalidRequest, LeaseNotFound
from orchestrator.input_limits import InputLimits
from orchestrator.leases import (
    AdmissionPolicy,
    Denial,
    DenyReason,
    Lease,
    LeaseOutcome,
    LeaseRequest,
    LeaseStatus,
)
from orchestrator.metrics import LeaseMetrics
from orchestrator.settings import Settings
from orchestrator.store import Store
from orchestrator.store.gpu_base import Sweep

logger = logging.getLogger(__name__)

# How often a waiting caller looks at its request (a release in this process wakes it
# sooner; one in another replica is seen at the next look).
WAIT_POLL_S = 0.1


class LeaseService:
    def __init__(
        self,
        store: Store,
        settings: Settings,
        clock: Clock,
        metrics: LeaseMetrics | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        self.metrics = metrics or LeaseMetrics()
        self._changed = threading.Condition()

    @property
    def limits(self) -> Limits:
        return Limits(self.settings.gpu_headroom_mb, self.settings.gpu_stale_s)

    def acquire(
        self, request: LeaseRequest, *, abandon: Callable[[], bool] | None = None
    ) -> LeaseOutcome:
        """Grant, or queue up to `wait_s` and then grant, or deny. `abandon` (polled while
        waiting) ends the wait early, as a timeout. Blocks its thread while it waits; the
        API waits without one (`begin`, `check`, `give_up`, `settle`)."""
        started = time.monotonic()
        outcome = self.begin(request)
        if outcome.lease is not None and outcome.lease.status is LeaseStatus.WAITING:
            token, deadline = outcome.lease.token, started + request.wait_s
            waited: LeaseOutcome | None = None
            while waited is None and time.monotonic() < deadline:
                if abandon is not None and abandon():
                    waited = self.cancel(token)
                    break
                with self._changed:
                    self._changed.wait(min(WAIT_POLL_S, max(0.0, deadline - time.monotonic())))
                waited = self.check(token)
            outcome = waited if waited is not None else self.give_up(token)
        return self.settle(request, outcome, started)

    def begin(self, request: LeaseRequest) -> LeaseOutcome:
        """Grant now, deny now, or queue (the outcome's lease is then `waiting`)."""
        self._validate(request)
        if self.settings.safe_mode:
            return LeaseOutcome(
                None, Denial(DenyReason.SAFE_MODE, "SAFE_MODE is on: no new leases are granted")
            )
        outcome = self.store.request_lease(request, self.clock.now(), self.limits)
        self._count_expired(outcome.expired)
        return outcome

    def check(self, token: str) -> LeaseOutcome | None:
        """A waiting request's state: granted, ended (timed out by the sweep), or None
        while it still waits."""
        current = self.store.get_lease(token)
        if current is None:
            raise LeaseNotFound(f"lease request {token} vanished", token=token)
        if current.status is LeaseStatus.WAITING:
            return None
        if current.status is LeaseStatus.ACTIVE:
            return LeaseOutcome(current)
        return self.give_up(token)

    def give_up(self, token: str) -> LeaseOutcome:
        """The wait is over (deadline, or the caller went away): granted at the last
        moment, or `timed_out`."""
        return self.store.finish_wait(token, self.clock.now(), self.limits)

    def cancel(self, token: str) -> LeaseOutcome:
        """The caller stopped waiting (hung up, shutting down): nothing is granted to it."""
        self.store.cancel_wait(token, self.clock.now(), self.limits)
        self._wake()
        return LeaseOutcome(
            None, Denial(DenyReason.WAIT_TIMEOUT, "the caller stopped waiting for a lease")
        )

    def settle(self, request: LeaseRequest, outcome: LeaseOutcome, started: float) -> LeaseOutcome:
        """Count and log a request's final outcome."""
        if not outcome.granted:
            assert outcome.denial is not None
            self.metrics.leases_denied.labels(outcome.denial.reason.value).inc()
            return outcome
        assert outcome.lease is not None
        self.metrics.leases_granted.inc()
        self.metrics.lease_wait.observe(time.monotonic() - started)
        logger.info(
            "lease %s granted to %s: %s devices %s, %d MB each",
            outcome.lease.token[:8],
            request.agent,
            outcome.lease.node,
            ",".join(map(str, outcome.lease.devices)),
            request.est_vram_mb,
            extra={"event": "lease_granted", "lease": outcome.lease.token[:8]},
        )
        return outcome

    def _validate(self, request: LeaseRequest) -> None:
        s = self.settings
        if not 0 < request.ttl_s <= s.lease_max_ttl_s:
            raise InvalidRequest(f"ttl_s must be in (0, {s.lease_max_ttl_s:g}]")
        if not 0 <= request.wait_s <= s.lease_max_wait_s:
            raise InvalidRequest(f"wait_s must be in [0, {s.lease_max_wait_s:g}]")
        InputLimits(s).check_names(
            agent=request.agent, operation=request.operation, node=request.node
        )

    def nodes_that_could_hold(self, est_vram_mb: int, gpu_count: int) -> set[str]:
        """The nodes with `gpu_count` devices big enough for `est_vram_mb` once free."""
        request = LeaseRequest(agent="-", est_vram_mb=est_vram_mb, gpu_count=gpu_count)
        policy = AdmissionPolicy()  # capacity alone: no quotas
        book = Book(self.store.list_devices(), (), policy, self.limits, self.clock.now())
        return book.possible_nodes(request)

    def get(self, token: str, owner: str | None = None) -> Lease:
        """The lease; with `owner`, only if that owner answers for it (else not found)."""
        lease = self.store.get_lease(token)
        if lease is None or (owner is not None and lease.owner != owner):
            raise LeaseNotFound(f"no lease {token}", token=token)
        return lease

    def heartbeat(
        self, token: str, used_vram_mb: int | None = None, owner: str | None = None
    ) -> Lease:
        if owner is not None:
            self._held_by_caller(token, owner)
        return self.store.renew_lease(token, self.clock.now(), used_vram_mb)

    def _held_by_caller(self, token: str, owner: str) -> None:
        """A non-admin may heartbeat or release its own leases, but not a job's: the worker
        running the job holds that one (through the store), and releasing it would free VRAM
        the job's handler still uses (DESIGN invariant 6)."""
        lease = self.get(token, owner)
        if lease.job_id is not None:
            raise Conflict(
                f"lease {token} belongs to job {lease.job_id}: its worker holds and releases "
                "it (an admin may too); cancel the job to stop it",
                reason="job_lease",
                token=token,
            )

    def release(
        self,
        token: str,
        *,
        peak_vram_mb: int | None = None,
        success: bool | None = None,
        owner: str | None = None,
    ) -> Lease:
        if owner is not None:
            self._held_by_caller(token, owner)
        lease = self.store.release_lease(
            token, self.clock.now(), self.limits, peak_vram_mb=peak_vram_mb, success=success
        )
        self._wake()
        return lease

    def active(self) -> list[Lease]:
        return self.store.list_leases((LeaseStatus.ACTIVE,))

    def sweep(self) -> Sweep:
        """The leader's pass (see `Store.sweep_leases`); counts and logs what expired."""
        sweep = self.store.sweep_leases(self.clock.now(), self.limits)
        self._count_expired(sweep.expired)
        if sweep.granted:
            self._wake()
        return sweep

    def _count_expired(self, expired: Sequence[Lease]) -> None:
        if expired:
            self.metrics.lease_expired.inc(len(expired))
        for lease in expired:
            logger.warning(
                "lease %s of %s expired (not heartbeated within %gs)%s",
                lease.token[:8],
                lease.agent,
                lease.ttl_s,
                f"; job {lease.job_id} loses its GPU" if lease.job_id else "",
                extra={"event": "lease_expired", "lease": lease.token[:8], "job_id": lease.job_id},
            )

    def _wake(self) -> None:
        with self._changed:
            self._changed.notify_all()
