"""Everything that differs between MariaDB and SQLite lives here."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pymysql
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

# Execution option that marks a connection as about to write (see `_begin`).
WRITE_OPTION = "orchestrator_write"
# Set in a pooled connection's `info` once its transaction has committed (see `_reset`).
COMMITTED_INFO = "orchestrator_committed"
# Set in a pooled connection's `info` when it goes back to the pool (see `_checkout`).
CHECKED_IN_INFO = "orchestrator_checked_in_at"
# A connection back in the pool for longer than this is pinged before it is handed out
# (HikariCP's `aliveBypassWindowMs`): a busy process, whose connections come back within
# milliseconds, skips a round trip per transaction; one that idled, such as after a server
# restart, finds out before its first statement. A connection that dies within the window
# fails that statement (StoreUnavailable, retried like any outage) and SQLAlchemy then
# replaces every pooled connection older than it.
PING_AFTER_IDLE_S = 1.0


def _datetime(value: str | bytes) -> Any:
    """pymysql's DATETIME decoder, by `datetime.fromisoformat` (in C) where it can: several
    times faster than its regular expression, and a claim reads six of them per job."""
    try:
        return datetime.fromisoformat(value.decode() if isinstance(value, bytes) else value)
    except ValueError:  # a zero date and the like: pymysql's rules (returned as a string)
        return pymysql.converters.convert_datetime(value)


def _escape_datetime(value: datetime, mapping: Any = None) -> str:
    """pymysql's DATETIME encoder, by `isoformat` (in C) for the naive datetimes we write
    (four per job submitted); an aware one keeps pymysql's rules (its zone is dropped)."""
    if value.tzinfo is not None:
        return str(pymysql.converters.escape_datetime(value, mapping))
    return f"'{value.isoformat(' ')}'"


_CONVERSIONS = {
    **pymysql.converters.conversions,
    datetime: _escape_datetime,
    pymysql.constants.FIELD_TYPE.DATETIME: _datetime,
    pymysql.constants.FIELD_TYPE.TIMESTAMP: _datetime,
}


def create_engine(url: str, *, sqlite_busy_timeout_ms: int = 15000) -> Engine:
    """An engine tuned for this workload on either backend."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed, sqlite_busy_timeout_ms)
    engine = sa.create_engine(
        parsed,
        pool_recycle=1800,
        pool_size=10,
        max_overflow=20,
        # Rollback-on-return is done by `_reset` below, less the round trip after a commit.
        pool_reset_on_return=None,
        # Conditional updates need no gap locks; READ COMMITTED avoids their deadlocks.
        isolation_level="READ COMMITTED",
        # A server that stops answering without closing the connection must not hang a
        # request, a probe or the leader's loop until the TCP timeout.
        connect_args={
            "charset": "utf8mb4",
            "connect_timeout": 10,
            "read_timeout": 30,
            "write_timeout": 30,
            "conv": _CONVERSIONS,
        },
    )

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        record.info.pop(COMMITTED_INFO, None)
        checked_in_at = record.info.pop(CHECKED_IN_INFO, None)
        if checked_in_at is not None and time.monotonic() - checked_in_at > PING_AFTER_IDLE_S:
            try:
                dbapi_conn.ping(reconnect=False)
            except pymysql.err.Error as exc:
                # The pool drops this connection and hands out another (SQLAlchemy's
                # pessimistic disconnect handling, by event).
                raise sa.exc.DisconnectionError(f"pooled connection is gone: {exc}") from exc

    @event.listens_for(engine, "checkin")
    def _checkin(_dbapi_conn: Any, record: Any) -> None:
        if record is not None:
            record.info[CHECKED_IN_INFO] = time.monotonic()

    @event.listens_for(engine, "reset")
    def _reset(dbapi_conn: Any, record: Any, state: Any) -> None:
        # The pool's default reset sends ROLLBACK on every check-in, even right after
        # `SqlBase._tx` committed (SQLAlchemy skips it only for a transaction still open at
        # close): one wasted round trip per transaction. Skip it only when `_tx` marked the
        # connection committed; anything else (a read on `engine.connect()`, an error, a
        # rollback) is rolled back as before, so no open transaction or lock goes back into
        # the pool.
        if not state.asyncio_safe:
            return
        committed = record is not None and record.info.pop(COMMITTED_INFO, False)
        if state.transaction_was_reset or committed:
            return
        dbapi_conn.rollback()

    return engine


def _sqlite_engine(url: sa.URL, busy_timeout_ms: int) -> Engine:
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": busy_timeout_ms / 1000},
        pool_size=8,
        max_overflow=16,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, emit BEGIN (see `_begin`).
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        # A write transaction takes the lock up front: a read that later upgrades to a write
        # would fail at once with SQLITE_BUSY instead of waiting for the lock.
        if conn.get_execution_options().get(WRITE_OPTION):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")

    return engine


def insert_rows(conn: Connection, table: sa.Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """`conn.execute(table.insert(), rows)`; on MariaDB without SQLAlchemy's per-value
    processing. Every row must have the same keys, as for any executemany.

    For a batch of 500 jobs that processing (one bind processor call and one dict entry
    per value) was a fifth of the API's time; MariaDB's columns need none, since pymysql
    escapes Python values itself. The SQL is the one SQLAlchemy compiles, and
    `before_cursor_execute` listeners still see it. SQLite keeps the processing: its
    DATETIME columns are strings in SQLAlchemy's format."""
    if not rows:
        return
    if conn.dialect.name == "sqlite":
        conn.execute(table.insert(), list(rows))
        return
    conn.exec_driver_sql(_insert_sql(conn.dialect, table, tuple(rows[0])), list(rows))


_INSERTS: dict[tuple[str, str, tuple[str, ...]], str] = {}


def _insert_sql(sql_dialect: sa.Dialect, table: sa.Table, keys: tuple[str, ...]) -> str:
    cache_key = (sql_dialect.name, table.name, keys)
    sql = _INSERTS.get(cache_key)
    if sql is None:
        statement = table.insert().values({k: sa.bindparam(k) for k in keys})
        sql = _INSERTS[cache_key] = str(statement.compile(dialect=sql_dialect))
    return sql


def upsert(engine: Engine, table: sa.Table, values: dict[str, Any], key: str) -> sa.Executable:
    """INSERT, or UPDATE the row with the same `key`."""
    changes = {k: v for k, v in values.items() if k != key}
    if is_sqlite(engine):
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return (
            sqlite_insert(table)
            .values(values)
            .on_conflict_do_update(index_elements=[key], set_=changes)
        )
    from sqlalchemy.dialects.mysql import insert as mysql_insert

    return mysql_insert(table).values(values).on_duplicate_key_update(changes)


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def is_duplicate_key(exc: sa.exc.IntegrityError) -> bool:
    """Whether an IntegrityError is a unique-key violation (and not, say, a NOT NULL one)."""
    orig = exc.orig
    if isinstance(orig, sqlite3.IntegrityError):
        return "UNIQUE" in str(orig)
    args: tuple[Any, ...] = getattr(orig, "args", ())
    return bool(args) and args[0] == 1062  # MySQL/MariaDB ER_DUP_ENTRY
