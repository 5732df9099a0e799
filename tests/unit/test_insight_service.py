"""`InsightService.reprioritise`: the new band's message goes out at once, or is left to
the scheduler when Redis does not answer."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import fakeredis
import redis

from orchestrator.clock import FakeClock
from orchestrator.insight import InsightService
from orchestrator.jobs import Priority
from orchestrator.settings import Settings
from orchestrator.store import SqlStore
from orchestrator.streams import RedisStreams
from orchestrator.streams.keys import Keys

from .store_helpers import Submitter


def test_reprioritise__publishes_in_the_new_band(
    store: SqlStore,
    streams: RedisStreams,
    redis_client: fakeredis.FakeRedis,
    settings: Settings,
    clock: FakeClock,
    submit: Submitter,
) -> None:
    job = submit(priority=Priority.LOW)
    InsightService(store, streams, settings, clock).reprioritise(job.id, Priority.HIGH, "ops")
    entries = redis_client.xrange(Keys().stream(job.type, Priority.HIGH))
    assert [fields for _, fields in entries] == [{"job_id": job.id, "attempt": "1"}]


def test_reprioritise__redis_down_leaves_it_to_the_scheduler(
    store: SqlStore,
    settings: Settings,
    clock: FakeClock,
    submit: Submitter,
    published_at: Callable[[str], datetime | None],
) -> None:
    job = submit(priority=Priority.LOW)
    down = RedisStreams(redis.Redis(port=1, socket_connect_timeout=0.1))
    moved = InsightService(store, down, settings, clock).reprioritise(job.id, Priority.HIGH, "ops")
    assert moved.priority is Priority.HIGH
    assert published_at(job.id) is None
    (due,) = store.due_dispatches(clock.now(), 10)
    assert due.priority is Priority.HIGH
