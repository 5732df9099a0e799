"""`Completions`: the slots' successful results, committed then acked by one thread in
batches; an outage is retried, a bad result cannot fail the others, nothing is acked before
its commit."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any, cast

import pytest

from orchestrator.clock import FakeClock
from orchestrator.errors import StoreUnavailable
from orchestrator.jobs import Claim, JobStatus
from orchestrator.settings import Settings
from orchestrator.store import Outcome, SqlStore, Store
from orchestrator.streams import RedisStreams, Streams
from workers.completions import Completions, Finished
from workers.outcomes import OutcomeRecorder

from .store_helpers import WORKER, Submitter, current, dispatch_of, event_names

JOB_TYPE = "inference_jobs"


class GatedStore:
    """The SQLite store, with `complete_jobs` calls recorded, held at a gate, or failed."""

    def __init__(self, store: SqlStore) -> None:
        self.store = store
        self.batches: list[list[str]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.writing = threading.Event()
        # Raised by the next calls, in order (None: that call goes through).
        self.batch_errors: list[Exception | None] = []
        self.refuse: set[str] = set()  # job ids that `complete_job` alone rejects

    def complete_jobs(self, items: Sequence[tuple[Claim, Any]], now: datetime) -> list[Outcome]:
        self.batches.append([claim.job.id for claim, _ in items])
        self.writing.set()
        self.gate.wait(5)  # a test that forgets to open it fails on its own assertions
        error = self.batch_errors.pop(0) if self.batch_errors else None
        if error is not None:
            raise error
        return self.store.complete_jobs(items, now)

    def complete_job(self, claim: Claim, result: Any, now: datetime) -> Outcome:
        if claim.job.id in self.refuse:
            raise ValueError("the store rejects this result")
        return self.store.complete_job(claim, result, now)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


class StallingStreams:
    """fakeredis streams whose acks can be held, as a Redis that stopped answering."""

    def __init__(self, streams: RedisStreams) -> None:
        self.streams = streams
        self.acks_flow = threading.Event()
        self.acks_flow.set()
        self.ack_waiting = threading.Event()

    def ack(self, deliveries: Sequence[Any]) -> None:
        self.ack_waiting.set()
        self.acks_flow.wait(5)
        self.streams.ack(deliveries)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.streams, name)


class Fixture:
    def __init__(self, store: SqlStore, streams: RedisStreams, clock: FakeClock) -> None:
        self.gated = GatedStore(store)
        self.streams = streams
        self.stalling = StallingStreams(streams)
        self.clock = clock
        self.recorded: list[int] = []
        self.recorder = OutcomeRecorder(
            cast(Store, self.gated), cast(Streams, self.stalling), clock, Settings()
        )
        self.completions = self.start()

    def start(self, max_pending: int = 8) -> Completions:
        return Completions(
            cast(Store, self.gated),
            self.clock,
            self.recorder,
            max_pending=max_pending,
            on_recorded=self.recorded.append,
        )

    def running(self, submit: Submitter, n: int) -> list[Finished]:
        """n jobs submitted, published, read by this worker and claimed."""
        jobs = [submit(type=JOB_TYPE) for _ in range(n)]
        self.streams.publish([dispatch_of(j) for j in jobs])
        deliveries = self.streams.read(WORKER, [JOB_TYPE], n, 0)
        dispatches = [d.dispatch for d in deliveries]
        claims = self.gated.store.claim_jobs(dispatches, WORKER, self.clock.now())
        assert all(claims)
        return [
            Finished(cast(Claim, c), d, {"n": i})
            for i, (c, d) in enumerate(zip(claims, deliveries, strict=True))
        ]

    def pending(self) -> int:
        """Deliveries not acked yet."""
        return sum(
            int(g["pending"])
            for stream, _ in self.streams.keys.streams(JOB_TYPE)
            if self.streams.client.exists(stream)
            for g in self.streams.client.xinfo_groups(stream)
        )


@pytest.fixture
def fx(store: SqlStore, streams: RedisStreams, clock: FakeClock) -> Iterator[Fixture]:
    streams.ensure_groups([JOB_TYPE])
    fixture = Fixture(store, streams, clock)
    yield fixture
    fixture.gated.gate.set()
    fixture.stalling.acks_flow.set()
    fixture.completions.close(5)


def _wait(predicate: Any, what: str) -> None:
    done = threading.Event()
    for _ in range(500):
        if predicate():
            return
        done.wait(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def test_completions__results_handed_over_during_a_write_share_the_next_one(
    fx: Fixture, submit: Submitter
) -> None:
    a, b, c = fx.running(submit, 3)
    fx.gated.gate.clear()
    fx.completions.put(a)
    assert fx.gated.writing.wait(5)  # a's batch is being written: b and c wait for the next
    fx.completions.put(b)
    fx.completions.put(c)
    assert fx.pending() == 3  # nothing is acked before its commit
    fx.gated.gate.set()
    _wait(lambda: sum(fx.recorded) == 3, "three results recorded")

    assert fx.gated.batches == [[a.claim.job.id], [b.claim.job.id, c.claim.job.id]]
    for f in (a, b, c):
        job = current(fx.gated.store, f.claim.job.id)
        assert (job.status, job.result) == (JobStatus.DONE, f.result)
        assert event_names(fx.gated.store, job.id) == ["submitted", "started", "completed"]
    _wait(lambda: fx.pending() == 0, "every delivery acked")


def test_completions__an_outage_is_retried_and_acks_wait_for_the_commit(
    fx: Fixture, submit: Submitter
) -> None:
    (a,) = fx.running(submit, 1)
    fx.gated.batch_errors.append(StoreUnavailable("database error: gone for a moment"))
    fx.completions.put(a)
    _wait(lambda: fx.recorded == [1], "the result recorded after the outage")

    assert fx.gated.batches == [[a.claim.job.id], [a.claim.job.id]]
    assert current(fx.gated.store, a.claim.job.id).status is JobStatus.DONE
    assert fx.pending() == 0


def test_completions__a_batch_that_fails_is_written_one_by_one_and_a_bad_result_fails_alone(
    fx: Fixture, submit: Submitter
) -> None:
    first, good, bad = fx.running(submit, 3)
    fx.gated.refuse.add(bad.claim.job.id)
    fx.gated.gate.clear()
    fx.completions.put(first)
    assert fx.gated.writing.wait(5)  # held: good and bad go in the next batch, together
    fx.completions.put(good)
    fx.completions.put(bad)
    fx.gated.batch_errors.extend([None, ValueError("one of these cannot be written")])
    fx.gated.gate.set()
    _wait(lambda: fx.pending() == 0, "every delivery acked")

    assert fx.gated.batches[1] == [good.claim.job.id, bad.claim.job.id]
    assert current(fx.gated.store, good.claim.job.id).status is JobStatus.DONE
    failed = current(fx.gated.store, bad.claim.job.id)
    assert failed.status is JobStatus.FAILED  # retried later, as any failed attempt
    assert failed.error == "could not record the outcome: ValueError"
    assert sum(fx.recorded) == 2  # the failed one is not counted as completed


def test_completions__stalled_acks_do_not_hold_up_the_next_commits(
    fx: Fixture, submit: Submitter
) -> None:
    a, b = fx.running(submit, 2)
    fx.stalling.acks_flow.clear()  # Redis stops answering acks
    fx.completions.put(a)
    assert fx.stalling.ack_waiting.wait(5)
    fx.completions.put(b)
    _wait(lambda: sum(fx.recorded) == 2, "b committed while a's ack hangs")

    assert current(fx.gated.store, b.claim.job.id).status is JobStatus.DONE
    assert fx.pending() == 2  # neither acked yet
    fx.stalling.acks_flow.set()
    _wait(lambda: fx.pending() == 0, "both acked once Redis answers")


def test_completions__after_close_a_result_is_refused_for_the_slot_to_record(
    fx: Fixture, submit: Submitter
) -> None:
    (a,) = fx.running(submit, 1)
    assert fx.completions.close(5) is True

    assert fx.completions.put(a) is False
    assert current(fx.gated.store, a.claim.job.id).status is JobStatus.RUNNING


def test_completions__close_writes_what_waits_first(fx: Fixture, submit: Submitter) -> None:
    finished = fx.running(submit, 4)
    fx.gated.gate.clear()
    for f in finished:
        fx.completions.put(f)
    threading.Timer(0.05, fx.gated.gate.set).start()

    assert fx.completions.close(5) is True
    assert sum(fx.recorded) == 4
    assert all(current(fx.gated.store, f.claim.job.id).status is JobStatus.DONE for f in finished)
    assert fx.pending() == 0


def test_completions__close_gives_up_after_its_timeout(fx: Fixture, submit: Submitter) -> None:
    (a,) = fx.running(submit, 1)
    fx.gated.gate.clear()
    fx.completions.put(a)
    assert fx.gated.writing.wait(5)

    assert fx.completions.close(0.05) is False
    assert fx.pending() == 1  # unacked: the reclaimer recovers the job
    fx.gated.gate.set()


def test_completions__a_slot_waits_while_max_pending_results_are_unwritten(
    fx: Fixture, submit: Submitter
) -> None:
    fx.completions.close(5)
    fx.completions = fx.start(max_pending=1)
    a, b, c = fx.running(submit, 3)
    fx.gated.gate.clear()
    fx.completions.put(a)
    assert fx.gated.writing.wait(5)
    fx.completions.put(b)  # the one result that may wait
    handed = threading.Event()
    slot = threading.Thread(target=lambda: (fx.completions.put(c), handed.set()), daemon=True)
    slot.start()
    assert not handed.wait(0.1)  # held: b is still unwritten

    fx.gated.gate.set()
    assert handed.wait(5)
    _wait(lambda: sum(fx.recorded) == 3, "all three recorded")
