"""`Completions`: the successful results of a worker's slots, committed by one thread and
then acked by another, as many at a time as have come in.

A slot whose handler returned hands its result over and takes its next job at once. The
commit thread writes every result waiting in one transaction (`Store.complete_jobs`) and
passes their messages on; the ack thread acks whatever has been passed on in one round
trip. The order "commit the outcome, then ack" (DESIGN invariant 3) holds per batch. The
slots no longer wait for a group commit of their own: one wake-up per batch instead of two
lock hand-offs per job was a quarter of a busy worker's CPU (ADR 0009).

Two threads, not one: a Redis that stalls the acks must not hold up the commits, or the
finished jobs waiting behind them would outlive the visibility timeout and be run again.
While the database is down a batch is retried (up to `RECORD_FOR_S`, as a slot would);
results pile up to `max_pending` and then slots wait to hand theirs over, so a worker never
runs far ahead of what it can record. A result the database would not take is left
unacked, for the reclaimer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from orchestrator.clock import Clock
from orchestrator.errors import Unavailable
from orchestrator.jobs import Claim
from orchestrator.store import Outcome, Store
from orchestrator.streams import Delivery
from workers.observer import outcome_of
from workers.outcomes import OutcomeRecorder, log_outcome, with_retries

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Finished:
    """A handler's successful return, waiting to be recorded."""

    claim: Claim
    delivery: Delivery
    result: Any


class _Batches(Generic[T]):
    """A thread that calls `write(items)` with everything put since its last call."""

    def __init__(self, name: str, write: Callable[[list[T]], None], max_pending: int) -> None:
        self._write = write
        self.max_pending = max(1, max_pending)
        self._cond = threading.Condition()
        self._pending: list[T] = []
        self._writing = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, items: list[T]) -> bool:
        """Queue `items`; waits while `max_pending` are unwritten. False (nothing queued)
        once closed or if the thread is gone: the caller must write them itself."""
        with self._cond:
            while len(self._pending) >= self.max_pending and self._open():
                self._cond.wait(0.5)
            if not self._open():
                return False
            self._pending.extend(items)
            self._cond.notify_all()
        return True

    def _open(self) -> bool:
        return not self._closed and self._thread.is_alive()

    def close(self, deadline: float) -> bool:
        """Write what is waiting (until the monotonic `deadline`), then stop the thread.
        False if items were still unwritten."""
        with self._cond:
            while (self._pending or self._writing) and self._thread.is_alive():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(0.2, left))
            flushed = not (self._pending or self._writing)
            self._closed = True
            self._cond.notify_all()
        if flushed:
            self._thread.join(1.0)
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
                self._cond.notify_all()  # callers waiting for room
            try:
                self._write(batch)
            except Exception:
                # Never fatal to the thread: what was not recorded stays unacked, and the
                # reclaimer recovers it.
                logger.exception(
                    "could not record %d items", len(batch), extra={"event": "record_failed"}
                )
            finally:
                with self._cond:
                    self._writing = False
                    self._cond.notify_all()


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
        """`on_recorded(n)`: n results were committed (or fenced) and their acks queued."""
        self.store = store
        self.clock = clock
        self.recorder = recorder
        self._on_recorded = on_recorded
        # Acks wait unbounded: they are small, and while Redis is down no new job is read.
        self._acks: _Batches[Delivery] = _Batches("acks", recorder.ack_all, 1 << 30)
        self._commits: _Batches[Finished] = _Batches("completions", self._write, max_pending)

    def put(self, finished: Finished) -> bool:
        """Hand a result over; waits only while `max_pending` results are unwritten. False
        once closed: the slot records it itself."""
        return self._commits.put([finished])

    def close(self, timeout: float) -> bool:
        """Commit and ack what is waiting (for at most `timeout` seconds), then stop. False
        if results were still unrecorded: they stay unacked, for the reclaimer."""
        deadline = time.monotonic() + timeout
        committed = self._commits.close(deadline)
        acked = self._acks.close(deadline)
        return committed and acked

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
        deliveries = [f.delivery for f, _ in recorded]
        if deliveries and not self._acks.put(deliveries):
            self.recorder.ack_all(deliveries)  # closing: ack here, after the commit
        for f, outcome in recorded:
            self.recorder.observer.job_finished(f.claim, outcome_of(outcome))
            log_outcome(f.claim, outcome)
        self._on_recorded(len(recorded))

    def _write_one(self, f: Finished) -> Outcome | None:
        """One result alone; a result the store rejects fails the attempt instead (never
        leave a finished attempt running). None if neither could be recorded, or if the
        failure was recorded and acked here."""
        try:
            return with_retries(
                lambda: self.store.complete_job(f.claim, f.result, self.clock.now())
            )
        except Unavailable as exc:
            self.recorder.lost(f.claim, exc)
            return None
        except Exception as exc:
            self.recorder.fail_unrecordable(f.claim, f.delivery, exc)
            return None
