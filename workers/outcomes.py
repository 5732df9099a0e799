"""Committing an attempt's outcome, then acking its message: in that order, with retries."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from orchestrator.clock import Clock
from orchestrator.errors import Unavailable
from orchestrator.jobs import Claim, Dispatch, JobStatus, retry_delay_s
from orchestrator.settings import Settings
from orchestrator.store import Outcome, Store
from orchestrator.store.codec import dumps
from orchestrator.streams import Delivery, Streams
from workers.batching import GroupCommit
from workers.observer import UNRECORDED, WorkerObserver, outcome_of

logger = logging.getLogger(__name__)

# How long a finished attempt keeps trying to record its outcome through an outage. Past
# this the message stays unacked and the job is recovered by the reclaimer.
RECORD_FOR_S = 60.0

R = TypeVar("R")


def _retrying() -> Retrying:
    return Retrying(
        retry=retry_if_exception_type(Unavailable),
        wait=wait_exponential(multiplier=0.1, max=5.0),
        stop=stop_after_delay(RECORD_FOR_S),
        reraise=True,
    )


def with_retries(call: Callable[[], R]) -> R:
    """`call()`, retried through an outage for up to RECORD_FOR_S. The first try goes
    without tenacity: building its retry state per job was a tenth of a no-op job's time."""
    try:
        return call()
    except Unavailable:
        pass
    for attempt in _retrying():
        with attempt:
            result = call()
    return result


class OutcomeRecorder:
    def __init__(
        self,
        store: Store,
        streams: Streams,
        clock: Clock,
        settings: Settings,
        observer: WorkerObserver | None = None,
    ) -> None:
        self.store = store
        self.streams = streams
        self.clock = clock
        self.settings = settings
        self.observer = observer or WorkerObserver()  # told each outcome: `job_finished`
        # Slots acking at the same time (stale deliveries, failures, give-backs) share one
        # round trip (workers/batching.py); each returns only once its own ack is done.
        # Successful results are committed and acked in batches by `workers.completions`.
        self._acks: GroupCommit[Delivery, None] = GroupCommit(self._ack_all, shared=(Unavailable,))

    def checked(self, status: str, value: Any) -> tuple[str, Any]:
        """(status, value) as it will be recorded: a result that is not JSON or is over
        `max_result_bytes` makes the attempt an error."""
        if status != "ok":
            return status, value
        try:
            size = len(dumps(value).encode())
        except (TypeError, ValueError) as exc:
            return "error", f"result is not JSON-serialisable: {exc}"
        if size > self.settings.max_result_bytes:
            limit = self.settings.max_result_bytes
            return "error", f"result is {size} bytes; the limit is {limit}"
        return status, value

    def record(self, claim: Claim, delivery: Delivery, status: str, value: Any) -> bool:
        """Record what a handler did ("ok" with its result, "timeout", "cancelled", or
        "error" with its message), then ack. False if it could not be committed."""
        status, value = self.checked(status, value)
        if status == "ok":
            outcome = self._record(
                claim, lambda: self.store.complete_job(claim, value, self.clock.now())
            )
        else:
            error = {
                "timeout": f"timed out after {claim.job.timeout_s:g}s",
                "cancelled": "cancelled",
            }.get(status, value)
            outcome = self.fail(claim, error, self.retry_delay(claim))
        if outcome is None:
            return False
        log_outcome(claim, outcome)
        self.ack(delivery)
        return True

    def retry_delay(self, claim: Claim) -> float:
        return retry_delay_s(
            claim.attempt, self.settings.retry_backoff_base_s, self.settings.retry_backoff_max_s
        )

    def fail(self, claim: Claim, error: str, retry_delay_s: float) -> Outcome | None:
        outcome = self._record(
            claim, lambda: self.store.fail_job(claim, error, self.clock.now(), retry_delay_s)
        )
        if outcome is not None and outcome.status is JobStatus.DEAD_LETTER:
            job = claim.job
            dispatch = Dispatch(job.id, job.type, job.priority, claim.attempt)
            try:
                for attempt in _retrying():
                    with attempt:
                        self.streams.dead_letter(dispatch, error)
            except Unavailable as exc:
                # The database already says dead_letter, and GET /jobs?status=dead_letter
                # lists it; only the DLQ stream's copy is missing.
                logger.error(
                    "job %s: dead-lettered, but not copied to the DLQ stream: %s",
                    job.id,
                    exc,
                    extra={"event": "dlq_copy_failed", "job_id": job.id, "attempt": claim.attempt},
                )
        return outcome

    def _record(self, claim: Claim, write: Callable[[], Outcome]) -> Outcome | None:
        """The outcome, or None if it could not be committed (the message is then left
        unacked, for the reclaimer)."""
        try:
            outcome = with_retries(write)
        except Unavailable as exc:
            self.lost(claim, exc)
            return None
        self.observer.job_finished(claim, outcome_of(outcome))
        return outcome

    def fail_unrecordable(self, claim: Claim, delivery: Delivery, exc: Exception) -> None:
        """Recording the attempt's outcome raised `exc` (not an outage): fail the attempt
        instead, then ack, rather than leave a finished attempt running."""
        logger.exception(
            "job %s: could not record its outcome",
            claim.job.id,
            exc_info=exc,
            extra={"event": "record_failed", "job_id": claim.job.id, "attempt": claim.attempt},
        )
        error = f"could not record the outcome: {type(exc).__name__}"
        if self.fail(claim, error, self.retry_delay(claim)) is not None:
            self.ack(delivery)

    def lost(self, claim: Claim, exc: Unavailable) -> None:
        """The outcome could not be committed: its message stays unacked, for the reclaimer."""
        logger.error(
            "job %s attempt %d: could not record its outcome: %s",
            claim.job.id,
            claim.attempt,
            exc,
            extra={"event": "outcome_lost", "job_id": claim.job.id, "attempt": claim.attempt},
        )
        self.observer.job_finished(claim, UNRECORDED)

    def ack(self, delivery: Delivery) -> None:
        try:
            with_retries(lambda: self._acks(delivery))
        except Unavailable as exc:
            # The outcome is committed; a redelivery fails its claim and is acked then.
            logger.error(
                "could not ack job %s: %s",
                delivery.dispatch.job_id,
                exc,
                extra={
                    "event": "ack_failed",
                    "job_id": delivery.dispatch.job_id,
                    "attempt": delivery.dispatch.attempt,
                },
            )

    def ack_all(self, deliveries: Sequence[Delivery]) -> None:
        """Ack many at once (their outcomes committed), in one round trip."""
        if not deliveries:
            return
        try:
            with_retries(lambda: self.streams.ack(deliveries))
        except Unavailable as exc:
            # The outcomes are committed; a redelivery fails its claim and is acked then.
            logger.error(
                "could not ack %d jobs: %s",
                len(deliveries),
                exc,
                extra={"event": "ack_failed", "count": len(deliveries)},
            )

    def _ack_all(self, deliveries: Sequence[Delivery]) -> list[None]:
        self.streams.ack(deliveries)
        return [None] * len(deliveries)


def log_outcome(claim: Claim, outcome: Outcome) -> None:
    if outcome.status is None:
        return  # fenced: the store logged the rejection
    level = logging.INFO if outcome.status.value in ("done", "cancelled") else logging.WARNING
    logger.log(
        level,
        "job %s attempt %d: %s",
        claim.job.id,
        claim.attempt,
        outcome.status.value,
        extra={
            "event": "job_" + outcome.status.value,
            "job_id": claim.job.id,
            "attempt": claim.attempt,
        },
    )
