"""The two backends every integration scenario runs on: SQLite + fakeredis, and the real
MariaDB + Redis servers. A real-server test skips locally when a server is absent, and fails
in CI (CI=true) or when ORCH_TEST_REQUIRE_REAL=1."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import fakeredis
import pytest
import redis
import sqlalchemy as sa

from orchestrator import migrate
from orchestrator.ids import new_token
from orchestrator.settings import Settings
from orchestrator.store import SqlStore
from orchestrator.streams import Keys, RedisStreams

MARIADB_URL = os.environ.get("ORCH_TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/test")
REDIS_URL = os.environ.get("ORCH_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
REAL_REQUIRED = os.environ.get("CI") == "true" or os.environ.get("ORCH_TEST_REQUIRE_REAL") == "1"

# Short intervals, so scenarios finish in a blink.
FAST = {
    "heartbeat_interval_s": 0.2,
    "retry_backoff_base_s": 0.05,
    "retry_backoff_max_s": 0.2,
    "scheduler_interval_s": 0.05,
    "read_block_ms": 100,
    "shutdown_grace_s": 2.0,
    "cancel_grace_s": 1.0,
    # The TestClient sends `Host: testserver`: the open API's host check must let it in.
    "allowed_hosts": "localhost,127.0.0.1,::1,testserver",
}


@dataclass
class Backend:
    name: str
    settings: Settings
    make_redis: Callable[[], redis.Redis]

    def store(self) -> SqlStore:
        return SqlStore.from_url(self.settings.resolved_database_url())

    def streams(self) -> RedisStreams:
        return RedisStreams(self.make_redis(), Keys(self.settings.redis_prefix))

    @property
    def keys(self) -> Keys:
        return Keys(self.settings.redis_prefix)


def unavailable(what: str, exc: Exception) -> None:
    message = f"{what} is not reachable ({exc}); start it, or run without it locally"
    if REAL_REQUIRED:
        pytest.fail(message)
    pytest.skip(message)


@contextmanager
def sqlite_backend(tmp_path: Path, **overrides: object) -> Iterator[Backend]:
    server = fakeredis.FakeServer()
    settings = Settings(
        data_dir=tmp_path / "var",
        database_url=f"sqlite:///{tmp_path / 'orchestrator.db'}",
        redis_url="redis://fake",
        **{**FAST, **overrides},  # type: ignore[arg-type]
    )
    yield Backend(
        "sqlite", settings, lambda: fakeredis.FakeRedis(server=server, decode_responses=True)
    )


@contextmanager
def real_database(url: str = MARIADB_URL) -> Iterator[str]:
    """A fresh MariaDB database for one test, dropped afterwards."""
    name = f"orch_t_{new_token()[:12]}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name} CHARACTER SET utf8mb4")
    except sa.exc.OperationalError as exc:
        admin.dispose()
        unavailable("MariaDB", exc)
    try:
        yield sa.make_url(url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
        admin.dispose()


@contextmanager
def real_redis_prefix(url: str = REDIS_URL) -> Iterator[str]:
    """A key prefix of our own on the real Redis, deleted afterwards."""
    client = redis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        unavailable("Redis", exc)
    prefix = f"orchtest:{new_token()[:12]}:"
    try:
        yield prefix
    finally:
        keys = list(client.scan_iter(f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


@contextmanager
def real_backend(tmp_path: Path, **overrides: object) -> Iterator[Backend]:
    with real_database() as db_url, real_redis_prefix() as prefix:
        settings = Settings(
            data_dir=tmp_path / "var",
            database_url=db_url,
            redis_url=REDIS_URL,
            redis_prefix=prefix,
            leader_lock=lock_name(db_url),
            **{**FAST, **overrides},  # type: ignore[arg-type]
        )
        clients: list[redis.Redis] = []

        def make_redis() -> redis.Redis:
            client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
            clients.append(client)
            return client

        yield Backend("mariadb", settings, make_redis)
        for client in clients:
            client.close()


def lock_name(db_url: str) -> str:
    """GET_LOCK names are server-wide: each test database elects its own leader."""
    return f"orch_leader_{sa.make_url(db_url).database}"


def migrated(backend: Backend) -> SqlStore:
    store = backend.store()
    migrate.upgrade(store.engine)
    return store
