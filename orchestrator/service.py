"""`JobService`: what the API does with jobs, independent of HTTP."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from orchestrator.api.schemas import SubmitRequest
from orchestrator.clock import Clock
from orchestrator.errors import (
    InvalidRequest,
    JobNotFound,
    PayloadTooLarge,
    StreamsUnavailable,
    Unavailable,
)
from orchestrator.input_limits import InputLimits
from orchestrator.jobs import Dispatch, Job, JobEvent, JobSpec, Priority, request_hash
from orchestrator.metrics import Metrics
from orchestrator.settings import Settings
from orchestrator.store import JobPage, Store, Submitted
from orchestrator.store.codec import dumps
from orchestrator.streams import Streams

logger = logging.getLogger(__name__)


class JobService:
    def __init__(
        self,
        store: Store,
        streams: Streams,
        settings: Settings,
        clock: Clock,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.streams = streams
        self.settings = settings
        self.clock = clock
        self.metrics = metrics or Metrics()
        self.limits = InputLimits(settings)

    def submit(
        self,
        requests: Sequence[SubmitRequest],
        owner: str = "anonymous",
        charge: Callable[[int], None] | None = None,
    ) -> list[Submitted]:
        """Store the jobs (all or nothing), then publish the due ones. `charge(n)` (the
        owner's submit rate limit) runs once the batch is valid, before anything is written:
        a rejected request costs no rate-limit budget, and a rate-limited one writes nothing."""
        if len(requests) > self.settings.max_batch_size:
            raise InvalidRequest(
                f"a batch holds at most {self.settings.max_batch_size} jobs",
                limit=self.settings.max_batch_size,
            )
        now = self.clock.now()
        specs = [self._spec(r, owner, now) for r in requests]
        if charge is not None:
            charge(len(specs))
        submitted = self.store.submit_jobs(specs, now)
        for s in submitted:
            if s.created:
                self.metrics.jobs_submitted.labels(s.job.type).inc()
        due = [
            Dispatch(s.job.id, s.job.type, s.job.priority, 1)
            for s in submitted
            if s.created and s.job.available_at <= now
        ]
        self._publish(due)
        return submitted

    def _publish(self, dispatches: list[Dispatch]) -> None:
        try:
            self.streams.publish(dispatches)
        except StreamsUnavailable as exc:
            # The rows are committed, so the jobs exist; the scheduler publishes them later.
            logger.warning(
                "could not publish %d jobs, left for the scheduler: %s",
                len(dispatches),
                exc,
                extra={"event": "publish_deferred"},
            )
            try:
                self.store.mark_unpublished([d.job_id for d in dispatches])
            except Unavailable as db_exc:
                # Committed but neither published nor marked: the relay's check of Redis
                # against the database republishes them (`orchestrator.reclaimer`).
                logger.error(
                    "jobs %s are committed but unpublished: %s",
                    ",".join(d.job_id for d in dispatches),
                    db_exc,
                    extra={"event": "publish_lost"},
                )

    def _spec(self, request: SubmitRequest, owner: str, now: datetime) -> JobSpec:
        self.limits.check_job_types([request.type])
        self.limits.check_idempotency_key(request.idempotency_key)
        try:
            size = len(dumps(request.payload).encode())
        except (ValueError, RecursionError) as exc:  # NaN, Infinity, lone surrogates, depth
            raise InvalidRequest(f"payload is not storable JSON: {exc}") from None
        if size > self.settings.max_payload_bytes:
            raise PayloadTooLarge(
                f"payload is {size} bytes; the limit is {self.settings.max_payload_bytes}",
                limit=self.settings.max_payload_bytes,
            )
        timeout_s = request.timeout_s or self.settings.default_timeout_s
        if timeout_s > self.settings.max_timeout_s:
            raise InvalidRequest(f"timeout_s is over the limit of {self.settings.max_timeout_s}")
        available_at = (
            max(request.run_at, now)
            if request.run_at is not None
            else now + timedelta(seconds=request.delay_s or 0)
        )
        self.limits.check_schedule(available_at, now)
        max_attempts = request.max_attempts or self.settings.default_max_attempts
        priority = Priority.from_label(request.priority)
        # Idempotency compares the request as sent (run_at already in UTC), not the server's
        # defaults: a retry after a change of ORCH_DEFAULT_* must still match. Without a key
        # nothing is ever compared, so nothing is hashed.
        digest = None
        if request.idempotency_key is not None:
            digest = request_hash(request.model_dump(mode="json", exclude_none=True))
        return JobSpec(
            type=request.type,
            payload=request.payload,
            priority=priority,
            max_attempts=max_attempts,
            timeout_s=timeout_s,
            available_at=available_at,
            idempotency_key=request.idempotency_key,
            request_hash=digest,
            owner=owner,
            gpu=request.gpu.needs() if request.gpu else None,
        )

    def get(self, job_id: str, owner: str | None = None) -> Job:
        """The job; with `owner`, only if it is that owner's: another's job is not found
        (404, not 403, so ids of other owners' jobs leak nothing)."""
        job = self.store.get_job(job_id)
        if job is None or (owner is not None and job.owner != owner):
            raise JobNotFound(f"no job {job_id}", job_id=job_id)
        return job

    def list_jobs(
        self,
        *,
        status: str | None,
        type: str | None,
        limit: int,
        cursor: str | None,
        owner: str | None = None,
    ) -> JobPage:
        return self.store.list_jobs(
            status=status, type=type, limit=limit, cursor=cursor, owner=owner
        )

    def events(self, job_id: str, owner: str | None = None) -> list[JobEvent]:
        self.get(job_id, owner)
        return self.store.job_events(job_id)

    def replay(self, job_id: str, actor: str = "anonymous") -> Job:
        """A dead-lettered job runs again with a fresh attempt budget (published by the
        scheduler on its next tick)."""
        return self.store.replay_dead_letter(job_id, self.clock.now(), actor)

    def cancel(self, job_id: str, actor: str = "anonymous", owner: str | None = None) -> Job:
        """Cancel as `actor`; with `owner`, only that owner's job (else not found)."""
        if owner is not None:
            self.get(job_id, owner)
        return self.store.cancel_job(job_id, self.clock.now(), actor)
