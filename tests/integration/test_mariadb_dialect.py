"""MariaDB's tuning in orchestrator/store/dialect.py: the pool pings a connection only after
it idled (a busy process skips the round trip; a connection the server dropped while it
idled is replaced before anyone uses it), DATETIMEs go through faster codecs, and
`insert_rows` writes what SQLAlchemy's own insert would."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from orchestrator.migrate import upgrade
from orchestrator.store import dialect
from orchestrator.store.tables import job_events
from tests.integration.backends import MARIADB_URL, real_database


@pytest.fixture
def engine() -> Iterator[Engine]:
    with real_database() as url:
        engine = dialect.create_engine(url)
        try:
            yield engine
        finally:
            engine.dispose()


def _pings(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the pings the pool sends, by connection id."""
    sent: list[int] = []
    with engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        connection_class = type(raw)
    original = connection_class.ping

    def counting(self: object, reconnect: bool = True) -> None:
        sent.append(id(self))
        original(self, reconnect=reconnect)

    monkeypatch.setattr(connection_class, "ping", counting)
    return sent


def test_pool__a_connection_back_within_the_window_is_not_pinged(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    pings = _pings(engine, monkeypatch)
    for _ in range(20):
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT 1").scalar() == 1
    assert pings == []


def test_pool__a_connection_dropped_while_idle_is_replaced_before_use(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dialect, "PING_AFTER_IDLE_S", 0.0)
    pings = _pings(engine, monkeypatch)
    with engine.connect() as conn:
        victim = conn.exec_driver_sql("SELECT CONNECTION_ID()").scalar()
    admin = sa.create_engine(MARIADB_URL, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as conn:
        conn.exec_driver_sql(f"KILL {int(victim)}")
    admin.dispose()
    # The first use after the kill succeeds: the ping found the connection dead, and the
    # pool handed out a new one.
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT CONNECTION_ID()").scalar() != victim
    assert len(pings) >= 1


def test_datetimes__decoded_as_pymysql_would(engine: Engine) -> None:
    with engine.connect() as conn:
        row = conn.exec_driver_sql(
            "SELECT CAST('2026-12-02 00:10:52.123456' AS DATETIME(6)),"
            " CAST('2026-12-02 00:10:52' AS DATETIME), TIMESTAMP('2026-01-31 23:59:59.5')"
        ).one()
    assert tuple(row) == (
        datetime(2026, 12, 2, 0, 10, 52, 123456),
        datetime(2026, 12, 2, 0, 10, 52),
        datetime(2026, 1, 31, 23, 59, 59, 500000),
    )


def test_insert_rows__the_same_rows_as_sqlalchemys_insert(engine: Engine) -> None:
    upgrade(engine)
    rows = [
        {
            "job_id": f"j{i}",
            "at": datetime(2026, 12, 2, 0, 10, 52, i),
            "event": "started",
            "status": "running",
            "attempt": i,
            "actor": "wörker \\ 'quoted' 🚀",
            "detail": None if i else '{"a": "b"}',
        }
        for i in range(3)
    ]
    with engine.begin() as conn:
        conn.exec_driver_sql("SET foreign_key_checks = 0")  # events of jobs that do not exist
        dialect.insert_rows(conn, job_events, rows[:2])
        conn.execute(job_events.insert(), rows[2:])
        dialect.insert_rows(conn, job_events, [])
    with engine.connect() as conn:
        found = conn.execute(sa.select(job_events).order_by(job_events.c.attempt)).all()
    assert [{k: r._mapping[k] for k in rows[0]} for r in found] == rows


def test_datetimes__a_zero_date_stays_a_string_as_in_pymysql() -> None:
    assert dialect._datetime("0000-00-00 00:00:00") == "0000-00-00 00:00:00"
    assert dialect._datetime(b"2026-12-02 00:10:52.000001") == datetime(2026, 12, 2, 0, 10, 52, 1)
