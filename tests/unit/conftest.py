"""Shared fixtures of the unit tests: a fake clock, a SQLite store, an in-process fake Redis."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import sqlalchemy as sa

from orchestrator import migrate
from orchestrator.clock import FakeClock
from orchestrator.jobs import Job, JobSpec, Priority, request_hash
from orchestrator.settings import Settings
from orchestrator.store import SqlStore
from orchestrator.store.tables import job_events, jobs
from orchestrator.streams import RedisStreams

from .store_helpers import SpecFactory, Submitter


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2026, 1, 1, 12, 0, 0))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlStore]:
    store = SqlStore.from_url(f"sqlite:///{tmp_path / 'orchestrator.db'}")
    migrate.upgrade(store.engine)
    yield store
    store.close()


def new_fake_redis() -> fakeredis.FakeRedis:
    """A fake Redis with a server of its own, so no two tests (or clients) share data."""
    return fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)


@pytest.fixture
def redis_client() -> Iterator[fakeredis.FakeRedis]:
    client = new_fake_redis()
    yield client
    client.close()


@pytest.fixture
def another_redis() -> Iterator[fakeredis.FakeRedis]:
    """A second, empty Redis: one that replaced `redis_client` and kept none of its data."""
    client = new_fake_redis()
    yield client
    client.close()


@pytest.fixture
def streams(redis_client: fakeredis.FakeRedis) -> RedisStreams:
    return RedisStreams(redis_client)


@pytest.fixture
def make_spec(clock: FakeClock) -> SpecFactory:
    """Build a `JobSpec`; any field may be overridden, `delay_s` offsets `available_at`."""

    def build(
        *,
        type: str = "inference_jobs",
        payload: Any = None,
        priority: Priority = Priority.NORMAL,
        max_attempts: int = 3,
        timeout_s: float = 60.0,
        delay_s: float = 0.0,
        idempotency_key: str | None = None,
        owner: str = "anonymous",
    ) -> JobSpec:
        payload = {"prompt": "hello"} if payload is None else payload
        body = {"type": type, "payload": payload, "priority": priority.label}
        return JobSpec(
            type=type,
            payload=payload,
            priority=priority,
            max_attempts=max_attempts,
            timeout_s=timeout_s,
            available_at=clock.now() + timedelta(seconds=delay_s),
            idempotency_key=idempotency_key,
            request_hash=request_hash(body),
            owner=owner,
        )

    return build


@pytest.fixture
def submit(store: SqlStore, clock: FakeClock, make_spec: SpecFactory) -> Submitter:
    """Submit one job built by `make_spec(**overrides)` at the clock's time; returns it."""

    def run(**overrides: Any) -> Job:
        [submitted] = store.submit_jobs([make_spec(**overrides)], clock.now())
        assert submitted.created
        return submitted.job

    return run


@pytest.fixture
def count_rows(store: SqlStore) -> Callable[[], tuple[int, int]]:
    """How many job rows and job event rows the database holds."""

    def count() -> tuple[int, int]:
        with store.engine.connect() as conn:
            job_rows = conn.execute(sa.select(sa.func.count()).select_from(jobs)).scalar_one()
            event_rows = conn.execute(
                sa.select(sa.func.count()).select_from(job_events)
            ).scalar_one()
        return int(job_rows), int(event_rows)

    return count


@pytest.fixture
def published_at(store: SqlStore) -> Callable[[str], datetime | None]:
    """A job's `published_at` column, which the `Job` dataclass does not carry."""

    def read(job_id: str) -> datetime | None:
        with store.engine.connect() as conn:
            query = sa.select(jobs.c.published_at).where(jobs.c.id == job_id)
            value: datetime | None = conn.execute(query).scalar_one()
        return value

    return read
