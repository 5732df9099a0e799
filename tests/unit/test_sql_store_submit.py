"""`SqlStore` on a SQLite file: submitting, publishing bookkeeping and reading."""

from __future__ import annotations

from datetime import timedelta

import pytest

from orchestrator.clock import FakeClock
from orchestrator.errors import IdempotencyConflict, InvalidRequest
from orchestrator.jobs import JobStatus, Priority
from orchestrator.store import SqlStore

from .store_helpers import (
    WORKER,
    CountRows,
    PublishedAt,
    SpecFactory,
    Submitter,
    claim,
    current,
    dispatch_of,
)

# -- submit ----------------------------------------------------------------------------------


def test_submit_jobs__creates_pending_jobs_with_a_submitted_event(
    store: SqlStore, clock: FakeClock, make_spec: SpecFactory
) -> None:
    results = store.submit_jobs(
        [make_spec(payload={"n": n}, priority=Priority.HIGH) for n in range(3)], clock.now()
    )
    assert [r.created for r in results] == [True, True, True]
    assert len({r.job.id for r in results}) == 3
    for n, result in enumerate(results):
        job = current(store, result.job.id)
        assert job.status is JobStatus.PENDING
        assert job.payload == {"n": n}
        assert job.priority is Priority.HIGH
        assert job.attempts == 0
        assert job.created_at == clock.now()
        [event] = store.job_events(job.id)
        assert (event.event, event.status, event.attempt) == ("submitted", "pending", 0)
        assert event.detail == {"priority": "high"}


def test_submit_jobs__same_key_same_request_returns_existing_job(
    store: SqlStore, clock: FakeClock, make_spec: SpecFactory, count_rows: CountRows
) -> None:
    [first] = store.submit_jobs([make_spec(idempotency_key="order-1")], clock.now())
    clock.advance(5)
    [again] = store.submit_jobs([make_spec(idempotency_key="order-1")], clock.now())
    assert first.created is True
    assert again.created is False
    assert again.job.id == first.job.id
    assert again.job.created_at == first.job.created_at
    assert count_rows() == (1, 1)


def test_submit_jobs__same_key_different_request_raises_and_writes_nothing(
    store: SqlStore, clock: FakeClock, make_spec: SpecFactory, count_rows: CountRows
) -> None:
    [first] = store.submit_jobs([make_spec(idempotency_key="order-1")], clock.now())
    before = count_rows()
    batch = [
        make_spec(idempotency_key="order-2"),
        make_spec(idempotency_key="order-1", payload={"prompt": "something else"}),
    ]
    with pytest.raises(IdempotencyConflict) as raised:
        store.submit_jobs(batch, clock.now())
    assert raised.value.details["job_id"] == first.job.id
    # All or nothing: the new key of the same batch was not written either.
    assert count_rows() == before == (1, 1)
    assert current(store, first.job.id).payload == {"prompt": "hello"}


def test_submit_jobs__same_key_for_another_owner_is_another_job(
    store: SqlStore, clock: FakeClock, make_spec: SpecFactory
) -> None:
    [mine] = store.submit_jobs([make_spec(idempotency_key="k", owner="alice")], clock.now())
    [theirs] = store.submit_jobs([make_spec(idempotency_key="k", owner="bob")], clock.now())
    assert theirs.created is True
    assert theirs.job.id != mine.job.id


def test_submit_jobs__duplicate_keys_within_one_batch_raise_and_write_nothing(
    store: SqlStore, clock: FakeClock, make_spec: SpecFactory, count_rows: CountRows
) -> None:
    batch = [
        make_spec(idempotency_key="a"),
        make_spec(idempotency_key="b"),
        make_spec(idempotency_key="a"),
    ]
    with pytest.raises(InvalidRequest):
        store.submit_jobs(batch, clock.now())
    assert count_rows() == (0, 0)


# -- publishing ------------------------------------------------------------------------------


def test_submit_jobs__due_job_is_marked_published_and_delayed_one_is_not(
    store: SqlStore, submit: Submitter, published_at: PublishedAt, clock: FakeClock
) -> None:
    due = submit()
    later = submit(delay_s=60)
    assert published_at(due.id) == clock.now()
    assert published_at(later.id) is None
    [event] = store.job_events(later.id)
    assert event.detail["available_at"] == later.available_at.isoformat()


def test_due_dispatches__orders_by_band_then_available_at_and_skips_not_yet_due(
    store: SqlStore, clock: FakeClock, submit: Submitter
) -> None:
    low_1 = submit(priority=Priority.LOW, delay_s=1)
    normal_2 = submit(priority=Priority.NORMAL, delay_s=2)
    critical_3 = submit(priority=Priority.CRITICAL, delay_s=3)
    normal_1 = submit(priority=Priority.NORMAL, delay_s=1)
    high_5 = submit(priority=Priority.HIGH, delay_s=5)
    submit(priority=Priority.CRITICAL, delay_s=100)  # not due yet
    clock.advance(10)

    due = store.due_dispatches(clock.now(), 100)

    expected = [critical_3, high_5, normal_1, normal_2, low_1]
    assert due == [dispatch_of(job) for job in expected]
    assert store.due_dispatches(clock.now(), 2) == [dispatch_of(job) for job in expected[:2]]


def test_mark_published__published_jobs_are_no_longer_due(
    store: SqlStore, clock: FakeClock, submit: Submitter, published_at: PublishedAt
) -> None:
    first = submit(delay_s=1)
    second = submit(delay_s=1)
    clock.advance(1)
    store.mark_published([dispatch_of(first)], clock.now())
    assert published_at(first.id) == clock.now()
    assert store.due_dispatches(clock.now(), 10) == [dispatch_of(second)]


def test_mark_published__job_that_moved_on_to_another_attempt_stays_due(
    store: SqlStore, clock: FakeClock, submit: Submitter, published_at: PublishedAt
) -> None:
    job = submit()
    store.fail_job(claim(store, clock, job), "boom", clock.now(), retry_delay_s=0)
    # A publish of attempt 1 that finishes late must not hide attempt 2 from the scheduler.
    store.mark_published([dispatch_of(job, attempt=1)], clock.now())
    assert published_at(job.id) is None
    store.mark_published([dispatch_of(job, attempt=2)], clock.now())
    assert published_at(job.id) == clock.now()


def test_mark_published__running_job_is_left_alone(
    store: SqlStore, clock: FakeClock, submit: Submitter, published_at: PublishedAt
) -> None:
    job = submit(delay_s=1)
    clock.advance(1)
    claim(store, clock, job)
    store.mark_published([dispatch_of(job)], clock.now())
    assert published_at(job.id) is None


def test_claim_job__early_delivery_has_the_job_published_again_when_due(
    store: SqlStore, clock: FakeClock, submit: Submitter, published_at: PublishedAt
) -> None:
    job = submit(delay_s=30)
    clock.advance(30)
    store.mark_published([dispatch_of(job)], clock.now())
    # A worker whose clock is behind sees the message before the job is due and drops it.
    early = clock.now() - timedelta(seconds=5)
    assert store.claim_job(dispatch_of(job), WORKER, early) is None
    assert published_at(job.id) is None
    assert store.due_dispatches(clock.now(), 10) == [dispatch_of(job)]


def test_claim_job__duplicate_delivery_does_not_unpublish_the_job(
    store: SqlStore, clock: FakeClock, submit: Submitter, published_at: PublishedAt
) -> None:
    job = submit()
    claim(store, clock, job)
    assert store.claim_job(dispatch_of(job), WORKER, clock.now()) is None
    assert store.claim_job(dispatch_of(job, attempt=3), WORKER, clock.now()) is None
    assert published_at(job.id) == clock.now()


def test_mark_unpublished__makes_jobs_due_again(
    store: SqlStore, clock: FakeClock, submit: Submitter
) -> None:
    job = submit()
    assert store.due_dispatches(clock.now(), 10) == []
    store.mark_unpublished([job.id])
    assert store.due_dispatches(clock.now(), 10) == [dispatch_of(job)]


def test_unpublish_waiting__marks_waiting_jobs_for_republishing_but_not_running_ones(
    store: SqlStore, clock: FakeClock, submit: Submitter, published_at: PublishedAt
) -> None:
    pending = submit()
    running = submit()
    claim(store, clock, running)
    retrying = submit()
    store.fail_job(claim(store, clock, retrying), "x", clock.now(), retry_delay_s=0)
    store.mark_published([dispatch_of(retrying, attempt=2)], clock.now())
    finished = submit()
    store.complete_job(claim(store, clock, finished), "ok", clock.now())
    assert store.due_dispatches(clock.now(), 10) == []

    assert store.unpublish_waiting() == 2

    assert published_at(running.id) is not None
    due = store.due_dispatches(clock.now(), 10)
    assert sorted(due, key=lambda d: d.job_id) == sorted(
        [dispatch_of(pending), dispatch_of(retrying, attempt=2)], key=lambda d: d.job_id
    )
    assert store.unpublish_waiting() == 0


# -- reading ---------------------------------------------------------------------------------


def test_list_jobs__newest_first_with_cursor_and_filters(
    store: SqlStore, submit: Submitter
) -> None:
    submitted = [submit(type="preloads" if n % 2 else "inference_jobs") for n in range(5)]
    # Ids are UUIDv7, so the newest has the greatest id.
    newest_first = sorted((job.id for job in submitted), reverse=True)
    page = store.list_jobs(status=None, type=None, limit=2, cursor=None)
    assert [j.id for j in page.jobs] == newest_first[:2]
    page2 = store.list_jobs(status=None, type=None, limit=2, cursor=page.next_cursor)
    page3 = store.list_jobs(status=None, type=None, limit=2, cursor=page2.next_cursor)
    assert [j.id for j in page2.jobs + page3.jobs] == newest_first[2:]
    assert page3.next_cursor is None
    preloads = store.list_jobs(status="pending", type="preloads", limit=10, cursor=None)
    assert {j.id for j in preloads.jobs} == {submitted[1].id, submitted[3].id}
    assert store.list_jobs(status="done", type=None, limit=10, cursor=None).jobs == []


def test_get_job__unknown_id_is_none(store: SqlStore) -> None:
    assert store.get_job("00000000-0000-7000-8000-000000000000") is None
