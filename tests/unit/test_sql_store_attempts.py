"""`SqlStore` on a SQLite file with a fake clock: one attempt's claim, fencing and outcome."""

from __future__ import annotations

from datetime import timedelta

import pytest

from orchestrator.clock import FakeClock
from orchestrator.errors import JobFinished, JobNotFound
from orchestrator.jobs import JobStatus
from orchestrator.store import SqlStore

from .store_helpers import (
    WORKER,
    PublishedAt,
    Submitter,
    claim,
    current,
    dispatch_of,
    event_names,
)

# -- claim -----------------------------------------------------------------------------------


def test_claim_job__first_delivery_runs_attempt_one(
    store: SqlStore, clock: FakeClock, submit: Submitter
) -> None:
    job = submit()
    claimed = claim(store, clock, job)
    assert claimed.attempt == 1
    assert len(claimed.token) == 32
    assert claimed.job.status is JobStatus.RUNNING
    assert claimed.job.attempts == 1
    assert claimed.job.worker_id == WORKER
    assert claimed.job.started_at == clock.now()
    assert event_names(store, job.id) == ["submitted", "started"]


def test_claim_job__duplicate_delivery_is_refused(
    store: SqlStore, clock: FakeClock, submit: Submitter
) -> None:
    job = submit()
    first = claim(store, clock, job)
    assert store.claim_job(dispatch_of(job), "worker-b", clock.now()) is None
    after = current(store, job.id)
    assert after.worker_id == WORKER
    assert after.attempts == 1
    # The first claim still holds the job.
    assert store.complete_job(first, {"ok": True}, clock.now()).status is JobStatus.DONE


@pytest.mark.parametrize("attempt", [0, 2, 5])
def test_claim_job__stale_or_future_attempt_number_is_refused(
    store: SqlStore, clock: FakeClock, submit: Submitter, attempt: int
) -> None:
    job = submit()
    assert store.claim_job(dispatch_of(job, attempt), WORKER, clock.now()) is None
    after = current(store, job.id)
    assert after.status is JobStatus.PENDING
    assert after.attempts == 0
    assert event_names(store, job.id) == ["submitted"]


def test_claim_job__not_before_available_at(
    store: SqlStore, clock: FakeClock, submit: Submitter
) -> None:
    job = submit(delay_s=30)
    assert store.claim_job(dispatch_of(job), WORKER, clock.now()) is None
    clock.advance(29.9)
    assert store.claim_job(dispatch_of(job), WORKER, clock.now()) is None
    clock.advance(0.1)
    assert store.claim_job(dispatch_of(job), WORKER, clock.now()) is not None


def test_claim_job__finished_job_is_refused(
    store: SqlStore, clock: FakeClock, submit: Submitter
) -> None:
    job = submit()
    store.cancel_job(job.id, clock.now(), "alice")
    assert store.claim_job(dispatch_of(job), WORKER, clock.now()) is None
    assert current(store, job.id).status is JobStatus.CANCELLED


# -- fencing ---------------------------------------------------------------------------------


def test_complete_job__stale_attempt_is_fenced_and_newer_attempt_keeps_the_job(
    store: SqlStore, clock: FakeClock, submit: Submitter
) -> None:
    job = submit(max_attempts=3)
    first = claim(store, clock, job, attempt=1)
    failed = store.fail_job(first, "oom", clock.now(), retry_delay_s=10)
    assert failed.status is JobStatus.FAILED
    clock.advance(10)
    second = claim(store, clock, job, attempt=2)
    assert second.token != first.token

    outcome = store.complete_job(first, {"from": "attempt 1"}, clock.now())

    assert outcome.status is None
    assert outcome.fenced
    after = current(store, job.id)
    assert after.status is JobStatus.RUNNING
    assert after.attempts == 2
    assert after.result is None
    rejected = [e for e in store.job_events(job.id) if e.event == "stale_result_rejected"]
    assert len(rejected) == 1
    assert rejected[0].attempt == 1
    assert rejected[0].detail == {
        "action": "complete",
        "current_status": "running",
        "current_attempt": 2,
    }
    # The current attempt still records its result.
    done = store.complete_job(second, {"from": "attempt 2"}, clock.now())
    assert done.status is JobStatus.DONE
    assert current(store, job.id).result == {"from": "attempt 2"}


def test_fail_and_release__stale_claim_is_fenced(
    store: SqlStore, clock: FakeClock, submit: Submitter
) -> None:
    job = submit()
    first = claim(store, clock, job, attempt=1)
    store.fail_job(first, "boom", clock.now(), retry_delay_s=0)
    second = claim(store, clock, job, attempt=2)
    assert store.fail_job(first, "late", clock.now(), retry_delay_s=0).fenced
    assert store.release_job(first, clock.now()).fenced
    assert not store.record_progress(first, {"pct": 50}, clock.now())
    after = current(store, job.id)
    assert (after.status, after.attempts, after.error) == (JobStatus.RUNNING, 2, "boom")
    assert store.release_job(second, clock.now()).status is JobStatus.PENDING


def test_complete_job__twice_with_the_same_claim_is_fenced_the_second_time(
    store: SqlStore, clock: FakeClock, submit: Submitter
) -> None:
    job = submit()
    claimed = claim(store, clock, job)
    assert store.complete_job(claimed, 1, clock.now()).status is JobStatus.DONE
    assert store.complete_job(claimed, 2, clock.now()).fenced
    assert current(store, job.id).result == 1


# -- outcomes --------------------------------------------------------------------------------


def test_fail_job__attempts_remain__failed_and_due_after_the_delay(
    store: SqlStore, clock: FakeClock, submit: Submitter, published_at: PublishedAt
) -> None:
    job = submit(max_attempts=2)
    claimed = claim(store, clock, job)
    failed_at = clock.now()
    outcome = store.fail_job(claimed, "CUDA error", failed_at, retry_delay_s=12.5)
    assert outcome.status is JobStatus.FAILED
    after = current(store, job.id)
    assert after.status is JobStatus.FAILED
    assert after.error == "CUDA error"
    assert after.available_at == failed_at + timedelta(seconds=12.5)
    assert after.finished_at is None
    assert published_at(job.id) is None
    [event] = [e for e in store.job_events(job.id) if e.event == "retry_scheduled"]
    assert event.detail["retry_at"] == after.available_at.isoformat()
    # Not due before the delay; then due as attempt 2.
    clock.advance(12)
    assert store.due_dispatches(clock.now(), 10) == []
    clock.advance(0.5)
    assert store.due_dispatches(clock.now(), 10) == [dispatch_of(job, attempt=2)]


def test_fail_job__at_max_attempts__dead_letter(
    store: SqlStore, clock: FakeClock, submit: Submitter
) -> None:
    job = submit(max_attempts=2)
    first = claim(store, clock, job, attempt=1)
    store.fail_job(first, "one", clock.now(), retry_delay_s=1)
    clock.advance(1)
    second = claim(store, clock, job, attempt=2)
    outcome = store.fail_job(second, "two", clock.now(), retry_delay_s=1)
    assert outcome.status is JobStatus.DEAD_LETTER
    after = current(store, job.id)
    assert after.status is JobStatus.DEAD_LETTER
    assert after.is_terminal
    assert after.error == "two"
    assert after.finished_at == clock.now()
    assert event_names(store, job.id)[-1] == "dead_lettered"
    clock.advance(60)
    assert store.due_dispatches(clock.now(), 10) == []


def test_fail_job__single_attempt_job_dead_letters_at_once(
    store: SqlStore, clock: FakeClock, submit: Submitter
) -> None:
    job = submit(max_attempts=1)
    outcome = store.fail_job(claim(store, clock, job), "boom", clock.now(), retry_delay_s=5)
    assert outcome.status is JobStatus.DEAD_LETTER


def test_complete_job__records_result_and_finishes(
    store: SqlStore, clock: FakeClock, submit: Submitter
) -> None:
    job = submit()
    claimed = claim(store, clock, job)
    clock.advance(3)
    outcome = store.complete_job(claimed, {"tokens": [1, 2, 3]}, clock.now())
    assert outcome.status is JobStatus.DONE
    assert outcome.job is not None
    assert outcome.job.result == {"tokens": [1, 2, 3]}
    assert outcome.job.finished_at == clock.now()
    assert event_names(store, job.id) == ["submitted", "started", "completed"]


# -- cancel ----------------------------------------------------------------------------------


def test_cancel_job__pending_job_is_cancelled(
    store: SqlStore, clock: FakeClock, submit: Submitter
) -> None:
    job = submit()
    cancelled = store.cancel_job(job.id, clock.now(), "alice")
    assert cancelled.status is JobStatus.CANCELLED
    assert cancelled.finished_at == clock.now()
    [*_, event] = store.job_events(job.id)
    assert (event.event, event.actor) == ("cancelled", "alice")


def test_cancel_job__running_job_is_asked_to_stop_and_heartbeat_says_so(
    store: SqlStore, clock: FakeClock, submit: Submitter
) -> None:
    running = claim(store, clock, submit())
    other = claim(store, clock, submit())
    assert store.heartbeat([running, other], clock.now()) == set()

    after = store.cancel_job(running.job.id, clock.now(), "alice")

    assert after.status is JobStatus.RUNNING
    assert after.cancel_requested is True
    assert store.heartbeat([running, other], clock.now()) == {running.token}
    # Asking twice records it once.
    store.cancel_job(running.job.id, clock.now(), "alice")
    assert event_names(store, running.job.id).count("cancel_requested") == 1
    # The attempt's end then counts as a cancellation, not a success.
    assert store.complete_job(running, "late", clock.now()).status is JobStatus.CANCELLED


def test_cancel_job__finished_job_raises_job_finished(
    store: SqlStore, clock: FakeClock, submit: Submitter
) -> None:
    job = submit()
    store.complete_job(claim(store, clock, job), "ok", clock.now())
    with pytest.raises(JobFinished):
        store.cancel_job(job.id, clock.now(), "alice")
    assert current(store, job.id).status is JobStatus.DONE


def test_cancel_job__unknown_job_raises_job_not_found(store: SqlStore, clock: FakeClock) -> None:
    with pytest.raises(JobNotFound):
        store.cancel_job("00000000-0000-7000-8000-000000000000", clock.now(), "alice")


# -- heartbeat -------------------------------------------------------------------------------


def test_heartbeat__refreshes_only_current_claims(
    store: SqlStore, clock: FakeClock, submit: Submitter
) -> None:
    job = submit()
    first = claim(store, clock, job, attempt=1)
    store.fail_job(first, "x", clock.now(), retry_delay_s=0)
    second = claim(store, clock, job, attempt=2)
    started = clock.now()
    clock.advance(30)
    store.heartbeat([first], clock.now())
    assert current(store, job.id).heartbeat_at == started
    store.heartbeat([second], clock.now())
    assert current(store, job.id).heartbeat_at == clock.now()


# -- release ---------------------------------------------------------------------------------


def test_release_job__back_to_pending_uncounted_and_due_again(
    store: SqlStore, clock: FakeClock, submit: Submitter, published_at: PublishedAt
) -> None:
    job = submit()
    claimed = claim(store, clock, job)
    assert published_at(job.id) is not None
    assert store.due_dispatches(clock.now(), 10) == []

    outcome = store.release_job(claimed, clock.now())

    assert outcome.status is JobStatus.PENDING
    after = current(store, job.id)
    assert after.status is JobStatus.PENDING
    assert after.attempts == 0
    assert after.worker_id is None
    assert published_at(job.id) is None
    assert store.due_dispatches(clock.now(), 10) == [dispatch_of(job, attempt=1)]
    # The old claim no longer holds it, and the same attempt can be claimed again.
    assert store.complete_job(claimed, "late", clock.now()).fenced
    assert claim(store, clock, job, attempt=1).attempt == 1


def test_release_job__cancel_requested_job_is_cancelled(
    store: SqlStore, clock: FakeClock, submit: Submitter
) -> None:
    job = submit()
    claimed = claim(store, clock, job)
    store.cancel_job(job.id, clock.now(), "alice")
    assert store.release_job(claimed, clock.now()).status is JobStatus.CANCELLED
    assert current(store, job.id).status is JobStatus.CANCELLED
