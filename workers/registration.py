"""A worker's row in `orchestrator_workers`: registered at start, heartbeated with the jobs it
runs, marked stopped at exit.

The row is for operators (`GET /workers`) and the pool policy (a pool's live workers); the
job's own heartbeat, not this one, decides whether a job lost its worker. So nothing here
may stop the worker: a database outage is logged through `on_outage`, and the next
heartbeat registers or heartbeats again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from datetime import timedelta

from orchestrator.clock import Clock, SystemClock
from orchestrator.errors import OrchestratorError, Unavailable
from orchestrator.fleet import PoolStatus, WorkerRegistration, WorkerStatus
from orchestrator.settings import Settings
from orchestrator.store import Store

logger = logging.getLogger(__name__)


class Registration:
    """Keeps one worker's row up to date. `beat` runs on the monitor thread; `register`
    and `stop` on the worker's main thread."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        worker: WorkerRegistration,
        on_outage: Callable[[Exception], None],
    ) -> None:
        self.store = store
        self.clock = clock
        self.worker = worker
        self._on_outage = on_outage
        self._registered = False
        self._stopped = False
        self._lock = threading.Lock()

    def register(self) -> bool:
        """Insert the row; False (retried by the next `beat`) when the database is down."""
        with self._lock:
            return self._register()

    def _register(self) -> bool:
        try:
            self.store.register_worker(self.worker, self.clock.now())
        except Unavailable as exc:
            self._on_outage(exc)
            return False
        self._registered = True
        logger.debug(
            "worker %s registered",
            self.worker.id,
            extra={"event": "worker_registered", "worker": self.worker.id},
        )
        return True

    def beat(self, current_jobs: Sequence[str], *, draining: bool) -> None:
        """Heartbeat the row with the jobs running now; register first if that failed, or
        again if the row is gone (pruned, or marked stopped by mistake)."""
        status = WorkerStatus.DRAINING if draining else WorkerStatus.RUNNING
        with self._lock:
            if self._stopped:
                return
            if not self._registered and not self._register():
                return
            try:
                found = self.store.heartbeat_worker(
                    self.worker.id, status, current_jobs, self.clock.now()
                )
            except Unavailable as exc:
                self._on_outage(exc)
                return
            if not found:
                logger.warning(
                    "worker %s: its registration was gone; registering again",
                    self.worker.id,
                    extra={"event": "worker_reregistered", "worker": self.worker.id},
                )
                self._registered = False
                if self._register() and current_jobs:
                    self._beat_quietly(status, current_jobs)

    def _beat_quietly(self, status: WorkerStatus, current_jobs: Sequence[str]) -> None:
        try:
            self.store.heartbeat_worker(self.worker.id, status, current_jobs, self.clock.now())
        except Unavailable as exc:
            self._on_outage(exc)

    def stop(self) -> None:
        """The worker is exiting: mark the row stopped (the leader marks it lost instead if
        the database is down now)."""
        with self._lock:
            self._stopped = True
            try:
                self.store.stop_worker(self.worker.id, self.clock.now())
            except Unavailable as exc:
                logger.warning(
                    "worker %s: could not mark itself stopped (%s)",
                    self.worker.id,
                    exc,
                    extra={"event": "worker_stop_unrecorded", "worker": self.worker.id},
                )


def pool_defaults(
    store: Store,
    settings: Settings,
    pool: str,
    job_types: list[str] | None,
    concurrency: int | None,
) -> tuple[list[str], int]:
    """The job types and concurrency of a worker of `pool`: those given, else the pool's.
    Raises `OrchestratorError` when the pool does not exist or is not active (a worker
    started for a pool being drained or stopped would only have to stop again)."""
    now = SystemClock().now()
    found = store.get_pool(pool, now - timedelta(seconds=settings.visibility_timeout_s))
    if found is None:
        raise OrchestratorError(f"no pool {pool} (create it: `orchestrator pools create`)")
    if found.status is not PoolStatus.ACTIVE:
        raise OrchestratorError(
            f"pool {pool} is {found.status}: resume it first (`orchestrator pools resume`)"
        )
    return job_types or list(found.job_types), concurrency or found.concurrency
