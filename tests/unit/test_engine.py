"""`Engine.tick`: publishing due jobs, and republishing when Redis lost its data."""

from __future__ import annotations

from typing import cast

import fakeredis

from orchestrator.clock import FakeClock
from orchestrator.engine import Engine
from orchestrator.jobs import Dispatch, Priority
from orchestrator.reclaimer import Reclaimer
from orchestrator.settings import Settings
from orchestrator.store import SqlStore
from orchestrator.streams import RedisStreams
from orchestrator.testing import FakeElection

from .store_helpers import Submitter

NORMAL_STREAM = "stream:orchestrator:inference_jobs"


def make_engine(
    store: SqlStore, streams: RedisStreams, settings: Settings, clock: FakeClock
) -> Engine:
    """An engine that leads (FakeElection), with its reclaimer."""
    return Engine(
        store, streams, settings, clock, FakeElection(), Reclaimer(store, streams, settings, clock)
    )


def entries(client: fakeredis.FakeRedis, stream: str) -> list[dict[str, str]]:
    """The fields of every entry of a stream, oldest first."""
    return [fields for _, fields in cast(list[tuple[str, dict[str, str]]], client.xrange(stream))]


def stream_job_ids(client: fakeredis.FakeRedis, stream: str = NORMAL_STREAM) -> list[str]:
    return [fields["job_id"] for fields in entries(client, stream)]


def test_tick__delayed_job_is_published_once_when_due(
    store: SqlStore,
    streams: RedisStreams,
    redis_client: fakeredis.FakeRedis,
    settings: Settings,
    clock: FakeClock,
    submit: Submitter,
) -> None:
    engine = make_engine(store, streams, settings, clock)
    job = submit(delay_s=60)

    assert engine.tick() == 0
    assert redis_client.xlen(NORMAL_STREAM) == 0
    clock.advance(59)
    assert engine.tick() == 0
    assert redis_client.xlen(NORMAL_STREAM) == 0

    clock.advance(1)
    assert engine.tick() == 1
    assert redis_client.xlen(NORMAL_STREAM) == 1
    assert entries(redis_client, NORMAL_STREAM)[0] == {"job_id": job.id, "attempt": "1"}

    assert engine.tick() == 0
    assert redis_client.xlen(NORMAL_STREAM) == 1


def test_tick__publishes_on_the_band_of_the_job(
    store: SqlStore,
    streams: RedisStreams,
    redis_client: fakeredis.FakeRedis,
    settings: Settings,
    clock: FakeClock,
    submit: Submitter,
) -> None:
    engine = make_engine(store, streams, settings, clock)
    engine.tick()
    critical = submit(priority=Priority.CRITICAL, delay_s=1)
    low = submit(priority=Priority.LOW, delay_s=1)
    clock.advance(1)
    assert engine.tick() == 2
    assert stream_job_ids(redis_client, f"{NORMAL_STREAM}:critical") == [critical.id]
    assert stream_job_ids(redis_client, f"{NORMAL_STREAM}:low") == [low.id]


def test_tick__retry_is_published_as_next_attempt_after_backoff(
    store: SqlStore,
    streams: RedisStreams,
    redis_client: fakeredis.FakeRedis,
    settings: Settings,
    clock: FakeClock,
    submit: Submitter,
) -> None:
    engine = make_engine(store, streams, settings, clock)
    engine.tick()
    job = submit()
    claim = store.claim_job(Dispatch(job.id, job.type, job.priority, 1), "w", clock.now())
    assert claim is not None
    store.fail_job(claim, "boom", clock.now(), retry_delay_s=5)

    assert engine.tick() == 0
    clock.advance(5)
    assert engine.tick() == 1
    assert entries(redis_client, NORMAL_STREAM)[-1] == {"job_id": job.id, "attempt": "2"}


def test_tick__new_engine_on_a_redis_that_has_our_data_republishes_nothing(
    store: SqlStore,
    streams: RedisStreams,
    redis_client: fakeredis.FakeRedis,
    settings: Settings,
    clock: FakeClock,
    submit: Submitter,
) -> None:
    job = submit()
    streams.publish([Dispatch(job.id, job.type, job.priority, 1)])  # stamps the epoch
    assert make_engine(store, streams, settings, clock).tick() == 0
    assert stream_job_ids(redis_client) == [job.id]


def test_tick__restarted_redis_stamped_by_a_submitter_first_still_gets_waiting_jobs(
    store: SqlStore,
    streams: RedisStreams,
    redis_client: fakeredis.FakeRedis,
    settings: Settings,
    clock: FakeClock,
    submit: Submitter,
) -> None:
    engine = make_engine(store, streams, settings, clock)
    engine.tick()
    before = submit()
    streams.publish([Dispatch(before.id, before.type, before.priority, 1)])
    redis_client.flushall()
    # A submit reaches the empty Redis before the engine's next tick, and sets a new epoch.
    after = submit()
    streams.publish([Dispatch(after.id, after.type, after.priority, 1)])

    assert engine.tick() == 2

    assert before.id in stream_job_ids(redis_client)


def test_tick__already_published_jobs_are_not_published_again_on_the_same_redis(
    store: SqlStore,
    streams: RedisStreams,
    redis_client: fakeredis.FakeRedis,
    settings: Settings,
    clock: FakeClock,
    submit: Submitter,
) -> None:
    engine = make_engine(store, streams, settings, clock)
    assert engine.tick() == 0  # a new Redis: the epoch is set
    submit()
    assert engine.tick() == 0
    assert redis_client.xlen(NORMAL_STREAM) == 0


def test_tick__missing_epoch_republishes_every_waiting_job_into_the_new_redis(
    store: SqlStore,
    streams: RedisStreams,
    redis_client: fakeredis.FakeRedis,
    settings: Settings,
    clock: FakeClock,
    submit: Submitter,
    another_redis: fakeredis.FakeRedis,
) -> None:
    old_engine = make_engine(store, streams, settings, clock)
    old_engine.tick()
    waiting = [submit(), submit(priority=Priority.HIGH)]
    running = submit()
    done = submit()
    # The submitter published them to the old Redis.
    streams.publish([Dispatch(j.id, j.type, j.priority, 1) for j in [*waiting, running, done]])
    for job in (running, done):
        claim = store.claim_job(Dispatch(job.id, job.type, job.priority, 1), "w", clock.now())
        assert claim is not None
        if job is done:
            store.complete_job(claim, "ok", clock.now())
    assert old_engine.tick() == 0

    new_engine = make_engine(store, RedisStreams(another_redis), settings, clock)
    assert new_engine.tick() == 2
    assert stream_job_ids(another_redis) == [waiting[0].id]
    assert stream_job_ids(another_redis, f"{NORMAL_STREAM}:high") == [waiting[1].id]
    # Once the new Redis is known, nothing is published twice.
    assert new_engine.tick() == 0
    assert another_redis.xlen(NORMAL_STREAM) == 1


def test_tick__flushed_redis_gets_waiting_jobs_again(
    store: SqlStore,
    streams: RedisStreams,
    redis_client: fakeredis.FakeRedis,
    settings: Settings,
    clock: FakeClock,
    submit: Submitter,
) -> None:
    engine = make_engine(store, streams, settings, clock)
    engine.tick()
    job = submit()
    streams.publish([Dispatch(job.id, job.type, job.priority, 1)])
    redis_client.flushall()

    assert engine.tick() == 1
    assert stream_job_ids(redis_client) == [job.id]
