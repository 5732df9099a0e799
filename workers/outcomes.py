"""Committing an attempt's outcome, then acking its message: in that order, with retries."""

from __future__ import annotations

import logging
from typing import Any

from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from orchestrator.clock import Clock
from orchestrator.errors import Unavailable
from orchestrator.jobs import Claim, Dispatch, JobStatus
from orchestrator.store import Outcome, Store
from orchestrator.streams import Delivery, Streams

logger = logging.getLogger(__name__)

# How long a finished attempt keeps trying to record its outcome through an outage. Past
# this the message stays unacked and the job is recovered by the reclaimer.
RECORD_FOR_S = 60.0


def _retrying() -> Retrying:
    return Retrying(
        retry=retry_if_exception_type(Unavailable),
        wait=wait_exponential(multiplier=0.1, max=5.0),
        stop=stop_after_delay(RECORD_FOR_S),
        reraise=True,
    )


class OutcomeRecorder:
    def __init__(self, store: Store, streams: Streams, clock: Clock) -> None:
        self.store = store
        self.streams = streams
        self.clock = clock

    def complete(self, claim: Claim, result: Any) -> Outcome | None:
        return self._record(claim, lambda: self.store.complete_job(claim, result, self.clock.now()))

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
                    extra={"event": "dlq_copy_failed", "job_id": job.id},
                )
        return outcome

    def _record(self, claim: Claim, write: Any) -> Outcome | None:
        """The outcome, or None if it could not be committed (the message is then left
        unacked, for the reclaimer)."""
        try:
            for attempt in _retrying():
                with attempt:
                    outcome: Outcome = write()
            return outcome
        except Unavailable as exc:
            logger.error(
                "job %s attempt %d: could not record its outcome: %s",
                claim.job.id,
                claim.attempt,
                exc,
                extra={"event": "outcome_lost", "job_id": claim.job.id},
            )
            return None

    def ack(self, delivery: Delivery) -> None:
        try:
            for attempt in _retrying():
                with attempt:
                    self.streams.ack([delivery])
        except Unavailable as exc:
            # The outcome is committed; a redelivery fails its claim and is acked then.
            logger.error(
                "could not ack job %s: %s",
                delivery.dispatch.job_id,
                exc,
                extra={"event": "ack_failed", "job_id": delivery.dispatch.job_id},
            )
