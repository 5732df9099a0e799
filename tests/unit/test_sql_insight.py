"""`SqlStore`'s insight queries: a job's place, re-prioritising, queue statistics."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

import pytest

from orchestrator.clock import FakeClock
from orchestrator.errors import Conflict, JobNotFound
from orchestrator.insight import percentile, summarise
from orchestrator.jobs import Dispatch, Priority
from orchestrator.store import SqlStore, sql_insight
from orchestrator.store.insight_base import QueueStats

from .store_helpers import WORKER, Submitter, claim, dispatch_of, event_names


def test_queue_place__counts_urgent_bands_and_earlier_in_its_band(
    store: SqlStore, clock: FakeClock, submit: Submitter
) -> None:
    submit(priority=Priority.HIGH)
    submit()
    clock.advance(1)
    mine = submit()
    clock.advance(1)
    submit()  # later in its band: behind it
    submit(priority=Priority.LOW)
    submit(priority=Priority.CRITICAL, delay_s=60)  # not due: not ahead
    submit(type="other", priority=Priority.CRITICAL)  # another type's queue
    place = store.queue_place(mine, clock.now())
    assert place.published
    assert place.ahead == {Priority.HIGH: 1, Priority.NORMAL: 1}


def test_reprioritise__old_band_message_fails_the_claim(
    store: SqlStore, clock: FakeClock, submit: Submitter
) -> None:
    job = submit(priority=Priority.LOW)
    moved, changed = store.reprioritise_job(job.id, Priority.HIGH, clock.now(), "alice")
    assert changed and moved.priority is Priority.HIGH
    assert store.claim_job(dispatch_of(job), WORKER, clock.now()) is None  # the low message
    assert store.claim_job(Dispatch(job.id, job.type, Priority.HIGH, 1), WORKER, clock.now())
    (event,) = [e for e in store.job_events(job.id) if e.event == "reprioritised"]
    assert event.actor == "alice"
    assert event.detail == {"from": "low", "to": "high"}


def test_reprioritise__delayed_job_is_left_to_the_scheduler(
    store: SqlStore,
    clock: FakeClock,
    submit: Submitter,
    published_at: Callable[[str], datetime | None],
) -> None:
    job = submit(delay_s=30)
    store.reprioritise_job(job.id, Priority.CRITICAL, clock.now(), "alice")
    assert published_at(job.id) is None
    clock.advance(31)
    (due,) = store.due_dispatches(clock.now(), 10)
    assert due.priority is Priority.CRITICAL


def test_reprioritise__same_band_changes_nothing(
    store: SqlStore, clock: FakeClock, submit: Submitter
) -> None:
    job = submit()
    _, changed = store.reprioritise_job(job.id, Priority.NORMAL, clock.now(), "alice")
    assert not changed
    assert "reprioritised" not in event_names(store, job.id)


def test_reprioritise__not_waiting_or_unknown(
    store: SqlStore, clock: FakeClock, submit: Submitter
) -> None:
    job = submit()
    claim(store, clock, job)
    with pytest.raises(Conflict):
        store.reprioritise_job(job.id, Priority.HIGH, clock.now(), "alice")
    with pytest.raises(JobNotFound):
        store.reprioritise_job("nope", Priority.HIGH, clock.now(), "alice")
    assert event_names(store, job.id) == ["submitted", "started"]


def test_queue_statistics__waits_and_outcomes_in_the_window(
    store: SqlStore, clock: FakeClock, submit: Submitter
) -> None:
    old = submit()
    clock.advance(10)
    store.complete_job(claim(store, clock, old), "ok", clock.now())
    clock.advance(7200)
    since = clock.now()
    first, second = submit(), submit(priority=Priority.HIGH)
    clock.advance(4)
    store.complete_job(claim(store, clock, first), "ok", clock.now())
    clock.advance(2)
    claim(store, clock, second)
    submit(priority=Priority.LOW)
    (stats,) = store.queue_statistics(clock.now(), since, "inference_jobs")
    assert stats.pending == {Priority.LOW: 1}
    assert stats.running == 1
    assert sorted(stats.waits_s) == [4.0, 6.0]  # the old job is outside the window
    assert (stats.done, stats.finished_last_hour, stats.dead_letter) == (1, 1, 0)
    assert store.queue_statistics(clock.now(), since - timedelta(days=1), "nothing") == [
        type(stats)("nothing", {}, 0, [], 0, 0, 0, 0)
    ]


def test_queue_statistics__waits_run_from_due_to_start_and_count_the_waiting(
    store: SqlStore, clock: FakeClock, submit: Submitter
) -> None:
    stuck = submit()  # submitted before the window, never started
    clock.advance(3600)
    since = clock.now()
    delayed = submit(delay_s=30)  # due in 30 s
    clock.advance(40)
    claim(store, clock, delayed)  # 10 s after it was due, not 40 after its submit
    waiting = submit()
    clock.advance(100)

    (stats,) = store.queue_statistics(clock.now(), since, "inference_jobs")

    assert stats.waits_s == [10.0]
    assert stats.waiting_s == [100.0]  # still waiting: its wait so far
    assert stats.oldest_wait_s == 3740.0  # the stuck one, whenever it was submitted
    summary = summarise(stats)
    assert (summary.claimed_in_window, summary.waiting_in_window) == (1, 1)
    assert summary.p95_wait_s == 100.0 and summary.avg_wait_s == 55.0
    assert summary.oldest_wait_s == 3740.0
    assert stuck.id != waiting.id


def test_summarise__p95_and_success_rate() -> None:
    stats = QueueStats("t", {Priority.LOW: 2}, 0, [float(s) for s in range(1, 21)], 5, 3, 1, 4)
    summary = summarise(stats)
    assert summary.avg_wait_s == 10.5 and summary.p95_wait_s == 19.0
    assert summary.success_rate == 0.75  # cancelled jobs are not failures
    assert summary.pending_by_band == {"critical": 0, "high": 0, "normal": 0, "low": 2}
    assert percentile([], 95) is None


def test_queue_place__counts_a_huge_backlog_up_to_a_bound(
    store: SqlStore, clock: FakeClock, submit: Submitter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sql_insight, "MAX_AHEAD", 2)
    submit(priority=Priority.HIGH)
    submit()
    submit()
    clock.advance(1)
    mine = submit()
    place = store.queue_place(mine, clock.now())
    assert place.capped
    assert place.ahead == {Priority.HIGH: 1, Priority.NORMAL: 1}  # the most urgent first
