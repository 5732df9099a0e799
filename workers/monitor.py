"""The monitor of a worker's running attempts: heartbeats, cancellation, time limits."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from orchestrator.clock import Clock
from orchestrator.errors import Unavailable
from orchestrator.jobs import Claim
from orchestrator.leases import Lease
from orchestrator.settings import Settings
from orchestrator.store import Store
from orchestrator.store.gpu_base import Renewal
from orchestrator.streams import Delivery
from workers.context import JobCancelled, JobContext, JobInterrupted, JobLeaseLost, JobTimeout
from workers.interrupt import raise_in_thread

logger = logging.getLogger(__name__)

MONITOR_TICK_S = 0.1
# An interrupted handler that does not stop is interrupted again this often.
REINTERRUPT_S = 1.0


@dataclass
class Running:
    """A job a slot is running now."""

    claim: Claim
    delivery: Delivery
    ctx: JobContext
    thread_id: int
    deadline: float  # monotonic
    cancel_deadline: float | None = None
    interrupt: type[JobInterrupted] | None = None
    interrupted_at: float = 0.0
    finished: bool = False
    released: bool = False
    lease: Lease | None = None  # the job's GPU lease, heartbeated with it
    # Monotonic time by which the lease surely expired unless renewed since: past it, the
    # devices may be someone else's even if we could not hear it (the database away).
    lease_until: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class Monitor:
    """Every `heartbeat_interval_s`: one heartbeat for all running attempts, which also
    brings back the cancels asked for. Every tick: time limits and cancel grace periods."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        settings: Callable[[], Settings],
        running: Callable[[], list[Running]],
        on_outage: Callable[[Exception], None],
        touch_buffered: Callable[[], None] | None = None,
        *,
        on_heartbeat: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self._settings = settings
        self._running = running
        self._on_outage = on_outage
        self._touch_buffered = touch_buffered
        # Called every heartbeat, busy or idle (the worker's own row: workers/registration.py).
        self._on_heartbeat = on_heartbeat

    def run(self, stopped: threading.Event) -> None:
        next_beat = 0.0
        while not stopped.is_set():
            now = time.monotonic()
            try:
                if now >= next_beat:
                    next_beat = now + self._settings().heartbeat_interval_s
                    self.heartbeat()
                    # After the jobs' heartbeat, which alone keeps them from being reclaimed.
                    self.beat_callback()
                self.enforce_limits(now)
            except Exception:
                # Without this thread there are no heartbeats, time limits or cancels: never
                # let one bad turn end it.
                logger.exception("monitor turn failed", extra={"event": "monitor_error"})
            stopped.wait(MONITOR_TICK_S)

    def heartbeat(self) -> None:
        if self._touch_buffered is not None:
            try:
                self._touch_buffered()
            except Unavailable as exc:
                self._on_outage(exc)
        running = self._running()
        if not running:
            return
        try:
            cancel = self.store.heartbeat([r.claim for r in running], self.clock.now())
            leased = [
                Renewal(r.lease.token, r.lease.ttl_s, r.claim.token, r.ctx.vram_used_mb)
                for r in running
                if r.lease is not None
            ]
            renewing_at = time.monotonic()
            lost = self.store.renew_leases(leased, self.clock.now()) if leased else set()
        except Unavailable as exc:
            self._on_outage(exc)
            return
        for r in running:
            if r.lease is not None and r.lease.token not in lost:
                # Less a heartbeat: the leader's clock, which judges expiry, may run ahead.
                margin = self._settings().heartbeat_interval_s
                r.lease_until = renewing_at + r.lease.ttl_s - margin
            if r.lease is not None and r.lease.token in lost:
                logger.error(
                    "job %s: its GPU lease expired; stopping its handler",
                    r.claim.job.id,
                    extra={
                        "event": "job_lease_lost",
                        "job_id": r.claim.job.id,
                        "attempt": r.claim.attempt,
                    },
                )
                interrupt(r, JobLeaseLost, time.monotonic())
        for r in running:
            if r.claim.token in cancel and r.cancel_deadline is None:
                logger.info(
                    "job %s: cancel requested",
                    r.claim.job.id,
                    extra={
                        "event": "cancel_seen",
                        "job_id": r.claim.job.id,
                        "attempt": r.claim.attempt,
                    },
                )
                r.ctx._set_cancelled()
                r.cancel_deadline = time.monotonic() + self._settings().cancel_grace_s

    def beat_callback(self) -> None:
        if self._on_heartbeat is None:
            return
        try:
            self._on_heartbeat()
        except Unavailable as exc:
            self._on_outage(exc)

    def enforce_limits(self, now: float) -> None:
        for r in self._running():
            if now >= r.deadline:
                interrupt(r, JobTimeout, now)
            elif r.cancel_deadline is not None and now >= r.cancel_deadline:
                interrupt(r, JobCancelled, now)
            elif r.lease_until is not None and now >= r.lease_until:
                interrupt(r, JobLeaseLost, now)


def interrupt(r: Running, exc_type: type[JobInterrupted], now: float) -> None:
    """Tell the handler to stop (`ctx.cancelled`) and raise `exc_type` in its thread; again
    every REINTERRUPT_S while it runs on."""
    with r.lock:
        if r.finished or now - r.interrupted_at < REINTERRUPT_S:
            return
        r.ctx._set_cancelled()
        r.interrupt = exc_type
        r.interrupted_at = now
        raise_in_thread(r.thread_id, exc_type)
    logger.warning(
        "job %s: interrupting its handler (%s)",
        r.claim.job.id,
        exc_type.__name__,
        extra={
            "event": "handler_interrupted",
            "job_id": r.claim.job.id,
            "attempt": r.claim.attempt,
        },
    )
