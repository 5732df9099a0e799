"""`Completions`: the successful outcomes of a worker's slots, committed and then acked by
one thread, as many at a time as have come in.

A slot whose handler returned hands its result over and takes its next job at once; this
thread commits every result waiting in one transaction (`Store.complete_jobs`), then acks
their messages in one round trip. The order "commit the outcome, then ack" (DESIGN
invariant 3) holds per batch. The slots no longer wait for a group commit of their own:
one thread wake-up per batch instead of two lock hand-offs per job was a quarter of a
busy worker's CPU (docs/benchmarks.md).

While the database is down the batch is retried (up to `RECORD_FOR_S`, as a slot would),
results pile up to `max_pending` and then slots wait to hand theirs over, so a worker
never runs far ahead of what it can record. A result the database would not take is left
unacked, for the reclaimer, as before.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from orchestrator.clock import Clock
from orchestrator.errors import Unavailable
from orchestrator.jobs import Claim
from orchestrator.store import Outcome, Store
from orchestrator.streams import Delivery
from workers.observer import outcome_of
from workers.outcomes import OutcomeRecorder, log_outcome, with_retries

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Finished:
    """A handler's successful return, waiting to be recorded."""

    claim: Claim
    delivery: Delivery
    result: Any


class Completions:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        recorder: OutcomeRecorder,
        *,
        max_pending: int,
        on_recorded: Callable[[int], None],
    ) -> None:
        """`on_recorded(n)`: n results were recorded (committed or fenced) and acked."""
        self.store = store
        self.clock = clock
        self.recorder = recorder
        self.max_pending = max(1, max_pending)
        self._on_recorded = on_recorded
        self._cond = threading.Condition()
        self._pending: list[Finished] = []
        self._writing = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="completions", daemon=True)
        self._thread.start()

    def put(self, finished: Finished) -> None:
        """Hand a result over; waits only while `max_pending` results are still unwritten."""
        with self._cond:
            while len(self._pending) >= self.max_pending and not self._closed:
                self._cond.wait(0.5)
            self._pending.append(finished)
            if len(self._pending) == 1:
                self._cond.notify_all()

    def close(self, timeout: float) -> bool:
        """Write what is waiting (for at most `timeout` seconds), then stop the thread.
        False if results were still unwritten: they stay unacked, for the reclaimer."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while (self._pending or self._writing) and time.monotonic() < deadline:
                self._cond.wait(min(0.2, max(deadline - time.monotonic(), 0.0)))
            flushed = not (self._pending or self._writing)
            self._closed = True
            self._cond.notify_all()
        self._thread.join(max(deadline - time.monotonic(), 0.0) + 1.0)
        return flushed

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending:
                    return  # closed, and nothing left
                batch, self._pending = self._pending, []
                self._writing = True
                self._cond.notify_all()  # slots waiting for room
            try:
                self._write(batch)
            except Exception:
                # Never fatal to the thread: the batch's messages stay pending, and the
                # reclaimer recovers their jobs.
                logger.exception(
                    "could not record %d results", len(batch), extra={"event": "record_failed"}
                )
            finally:
                with self._cond:
                    self._writing = False
                    self._cond.notify_all()

    def _write(self, batch: list[Finished]) -> None:
        items = [(f.claim, f.result) for f in batch]
        try:
            outcomes: list[Outcome | None] = list(
                with_retries(lambda: self.store.complete_jobs(items, self.clock.now()))
            )
        except Unavailable as exc:
            for f in batch:
                self.recorder.lost(f.claim, exc)
            return
        except Exception as exc:
            # Taken as one result's fault: each is written on its own, so it cannot fail
            # the others.
            logger.warning(
                "a batch of %d results failed (%s); writing them one by one",
                len(batch),
                exc,
                extra={"event": "record_batch_failed"},
            )
            outcomes = [self._write_one(f) for f in batch]
        recorded = [(f, o) for f, o in zip(batch, outcomes, strict=True) if o is not None]
        for f, outcome in recorded:
            self.recorder.observer.job_finished(f.claim, outcome_of(outcome))
            log_outcome(f.claim, outcome)
        self.recorder.ack_all([f.delivery for f, _ in recorded])
        self._on_recorded(len(recorded))

    def _write_one(self, f: Finished) -> Outcome | None:
        """One result alone; a result the store rejects fails the attempt instead (never
        leave a finished attempt running). None if neither could be recorded."""
        try:
            return with_retries(
                lambda: self.store.complete_job(f.claim, f.result, self.clock.now())
            )
        except Unavailable as exc:
            self.recorder.lost(f.claim, exc)
            return None
        except Exception as exc:
            logger.exception(
                "job %s: could not record its outcome",
                f.claim.job.id,
                extra={
                    "event": "record_failed",
                    "job_id": f.claim.job.id,
                    "attempt": f.claim.attempt,
                },
            )
            error = f"could not record the outcome: {type(exc).__name__}"
            failed = self.recorder.fail(f.claim, error, self.recorder.retry_delay(f.claim))
            if failed is not None:
                self.recorder.ack(f.delivery)
            return None
