"""Races between the scheduler, duplicate deliveries and skewed clocks, at the Store."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest

from orchestrator.jobs import Dispatch, JobSpec, JobStatus, Priority
from orchestrator.store import SqlStore
from tests.integration.backends import Backend, migrated

T0 = datetime(2026, 3, 1, 12, 0, 0)


@pytest.fixture
def store(backend: Backend) -> Iterator[SqlStore]:
    store = migrated(backend)
    yield store
    store.close()


def spec(available_at: datetime = T0, max_attempts: int = 3) -> JobSpec:
    return JobSpec(
        type="echo",
        payload={},
        priority=Priority.NORMAL,
        max_attempts=max_attempts,
        timeout_s=60,
        available_at=available_at,
        idempotency_key=None,
        request_hash="h",
    )


def test_mark_published__does_not_swallow_the_next_attempt(store: SqlStore) -> None:
    (submitted,) = store.submit_jobs([spec()], T0)
    job_id = submitted.job.id
    store.mark_unpublished([job_id])
    due = store.due_dispatches(T0, 10)  # the scheduler reads attempt 1 ...
    assert [d.attempt for d in due] == [1]
    # ... meanwhile a duplicate message runs attempt 1, which fails and schedules attempt 2 ...
    claim = store.claim_job(Dispatch(job_id, "echo", Priority.NORMAL, 1), "w1", T0)
    assert claim is not None
    assert store.fail_job(claim, "boom", T0, retry_delay_s=1).status is JobStatus.FAILED
    # ... then the scheduler records its (now stale) publish of attempt 1.
    store.mark_published(due, T0)
    later = T0 + timedelta(seconds=2)
    assert [(d.job_id, d.attempt) for d in store.due_dispatches(later, 10)] == [(job_id, 2)]


def test_claim__early_message_hands_the_job_back_to_the_scheduler(store: SqlStore) -> None:
    due_at = T0 + timedelta(seconds=10)
    (submitted,) = store.submit_jobs([spec(available_at=T0)], T0)
    job_id = submitted.job.id
    store.submit_jobs([spec(available_at=due_at)], T0)
    # The job was published (published_at set); a worker whose clock is behind sees it early.
    early = store.claim_job(
        Dispatch(job_id, "echo", Priority.NORMAL, 1), "w1", T0 - timedelta(seconds=5)
    )
    assert early is None
    assert [d.job_id for d in store.due_dispatches(T0, 10)] == [job_id]
    assert store.get_job(job_id).status is JobStatus.PENDING  # type: ignore[union-attr]


def test_claim__stale_attempt_does_not_unpublish(store: SqlStore) -> None:
    (submitted,) = store.submit_jobs([spec()], T0)
    job_id = submitted.job.id
    assert store.claim_job(Dispatch(job_id, "echo", Priority.NORMAL, 2), "w1", T0) is None
    assert store.due_dispatches(T0, 10) == []  # still published: its real message is out


def test_complete__after_cancel_request_is_recorded_as_cancelled(store: SqlStore) -> None:
    (submitted,) = store.submit_jobs([spec()], T0)
    claim = store.claim_job(Dispatch(submitted.job.id, "echo", Priority.NORMAL, 1), "w1", T0)
    assert claim is not None
    store.cancel_job(submitted.job.id, T0, "someone")
    outcome = store.complete_job(claim, {"r": 1}, T0)
    assert outcome.status is JobStatus.CANCELLED
    assert [e.event for e in store.job_events(submitted.job.id)][-2:] == [
        "cancel_requested",
        "cancelled",
    ]


def _trail(store: SqlStore, job_id: str) -> list[tuple[object, ...]]:
    return [
        (e.event, e.status, e.attempt, e.actor, e.detail, e.at) for e in store.job_events(job_id)
    ]


def test_groups__audit_entries_equal_those_of_single_calls(store: SqlStore) -> None:
    """Group claims and completions write their entries with INSERT ... SELECT: the same
    entries, field for field, as the single calls (a retried attempt, a cancel)."""
    made = store.submit_jobs([spec() for _ in range(6)], T0)
    grouped, single = [s.job for s in made[:3]], [s.job for s in made[3:]]
    for retried in (grouped[1], single[1]):
        first = store.claim_job(Dispatch(retried.id, "echo", Priority.NORMAL, 1), "w0", T0)
        assert first is not None
        store.fail_job(first, "boom", T0, retry_delay_s=0)
    t1, t2 = T0 + timedelta(seconds=1), T0 + timedelta(seconds=2)
    attempts = (1, 2, 1)
    claims = store.claim_jobs(
        [
            Dispatch(j.id, "echo", Priority.NORMAL, a)
            for j, a in zip(grouped, attempts, strict=True)
        ],
        "w1",
        t1,
    )
    singles = [
        store.claim_job(Dispatch(j.id, "echo", Priority.NORMAL, a), "w1", t1)
        for j, a in zip(single, attempts, strict=True)
    ]
    for job in (grouped[2], single[2]):
        store.cancel_job(job.id, t1, "someone")
    store.complete_jobs([(c, {"ok": 1}) for c in claims if c], t2)
    for c in singles:
        assert c is not None
        store.complete_job(c, {"ok": 1}, t2)

    for g, s in zip(grouped, single, strict=True):
        assert _trail(store, g.id) == _trail(store, s.id)
    assert [e[:4] for e in _trail(store, grouped[1].id)[-2:]] == [
        ("started", "running", 2, "w1"),
        ("completed", "done", 2, "w1"),
    ]
    assert _trail(store, grouped[2].id)[-1][:4] == ("cancelled", "cancelled", 1, "w1")
    assert _trail(store, grouped[0].id)[-1][5] == t2
