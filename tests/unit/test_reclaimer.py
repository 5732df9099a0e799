"""The reclaimer and the SQLite lease on a fake clock: staleness without sleeping."""

from __future__ import annotations

from datetime import timedelta

import fakeredis

from orchestrator.clock import FakeClock
from orchestrator.jobs import JobStatus
from orchestrator.reclaimer import Reclaimer
from orchestrator.settings import Settings
from orchestrator.store import SqlStore
from orchestrator.store.election import LeaseElection
from orchestrator.streams import RedisStreams

from .store_helpers import Submitter, claim, current, event_names


def reclaimer(
    store: SqlStore, streams: RedisStreams, settings: Settings, clock: FakeClock
) -> Reclaimer:
    return Reclaimer(
        store, streams, settings.model_copy(update={"visibility_timeout_s": 30}), clock
    )


def test_reclaim__attempt_heartbeating_within_the_timeout_is_kept(
    store: SqlStore,
    streams: RedisStreams,
    settings: Settings,
    clock: FakeClock,
    submit: Submitter,
) -> None:
    job = submit()
    held = claim(store, clock, job)
    for _ in range(5):  # an hour of work, heartbeating every 20 s
        clock.advance(20)
        store.heartbeat([held], clock.now())
        assert reclaimer(store, streams, settings, clock).reclaim().requeued == 0
    assert current(store, job.id).status is JobStatus.RUNNING


def test_reclaim__attempt_silent_past_the_timeout_is_requeued_and_fenced(
    store: SqlStore,
    streams: RedisStreams,
    settings: Settings,
    clock: FakeClock,
    submit: Submitter,
    redis_client: fakeredis.FakeRedis,
) -> None:
    job = submit()
    held = claim(store, clock, job)
    clock.advance(29)
    assert reclaimer(store, streams, settings, clock).reclaim().requeued == 0
    clock.advance(2)
    report = reclaimer(store, streams, settings, clock).reclaim()
    assert (report.scanned, report.requeued) == (1, 1)
    after = current(store, job.id)
    assert (after.status, after.attempts) == (JobStatus.PENDING, 1)
    assert event_names(store, job.id)[-1] == "reclaimed"
    # The fresh message is for attempt 2 ...
    [(_, fields)] = redis_client.xrange("stream:orchestrator:inference_jobs")
    assert fields == {"job_id": job.id, "attempt": "2"}
    # ... and the lost attempt's late result is refused.
    assert store.complete_job(held, {"late": True}, clock.now()).fenced


def test_reclaim__out_of_attempts_is_dead_lettered_with_a_dlq_copy(
    store: SqlStore,
    streams: RedisStreams,
    settings: Settings,
    clock: FakeClock,
    submit: Submitter,
    redis_client: fakeredis.FakeRedis,
) -> None:
    job = submit(max_attempts=1)
    claim(store, clock, job)
    clock.advance(31)
    report = reclaimer(store, streams, settings, clock).reclaim()
    assert report.dead_lettered == 1
    assert current(store, job.id).status is JobStatus.DEAD_LETTER
    [(_, fields)] = redis_client.xrange("stream:orchestrator:inference_jobs:dlq")
    assert fields["job_id"] == job.id and "worker lost" in fields["error"]


def test_reclaim__cancel_requested_attempt_ends_cancelled(
    store: SqlStore,
    streams: RedisStreams,
    settings: Settings,
    clock: FakeClock,
    submit: Submitter,
) -> None:
    job = submit()
    claim(store, clock, job)
    store.cancel_job(job.id, clock.now(), "someone")
    clock.advance(31)
    reclaimer(store, streams, settings, clock).reclaim()
    assert current(store, job.id).status is JobStatus.CANCELLED


def test_lease__expires_on_the_clock_and_the_epoch_grows(store: SqlStore, clock: FakeClock) -> None:
    a = LeaseElection(store.engine, "a", ttl_s=3)
    b = LeaseElection(store.engine, "b", ttl_s=3)
    assert a.check(clock.now()) and not b.check(clock.now())
    first = a.current().epoch
    clock.advance(2)
    assert a.check(clock.now())  # renewed: good for 3 s more
    clock.advance(2.5)
    assert not b.check(clock.now())
    clock.advance(1)  # a went silent past its lease
    assert b.check(clock.now())
    assert b.current().epoch == first + 1
    assert not a.check(clock.now())
    assert b.current().since == clock.now()
    assert b.current().expires_at == clock.now() + timedelta(seconds=3)
