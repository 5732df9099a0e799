"""The worker registrations side of `SqlStore`: workers register, heartbeat and stop; the
leader marks silent ones lost and prunes old rows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from orchestrator.fleet import LIVE_WORKER_STATUSES, WorkerInfo, WorkerRegistration, WorkerStatus
from orchestrator.store import dialect
from orchestrator.store.codec import dumps, loads
from orchestrator.store.sql_base import SqlBase
from orchestrator.store.tables import workers

# The leader marks lost workers in batches, so one pass stays one short transaction.
LOST_BATCH = 1000


class SqlWorkers(SqlBase):
    """Worker rows; a worker is live while running or draining with a fresh heartbeat."""

    def register_worker(self, worker: WorkerRegistration, now: datetime) -> None:
        row = {
            "id": worker.id,
            "node": worker.node,
            "pool": worker.pool,
            "pid": worker.pid,
            "job_types": dumps(list(worker.job_types)),
            "concurrency": worker.concurrency,
            "status": WorkerStatus.RUNNING.value,
            "current_jobs": dumps([]),
            "started_at": now,
            "heartbeat_at": now,
            "stopped_at": None,
        }
        with self._tx(write=True) as conn:
            conn.execute(dialect.upsert(self.engine, workers, row, key="id"))

    def heartbeat_worker(
        self, worker_id: str, status: WorkerStatus, current_jobs: Sequence[str], now: datetime
    ) -> bool:
        with self._tx(write=True) as conn:
            found = conn.execute(
                workers.update()
                .where(workers.c.id == worker_id, workers.c.status != WorkerStatus.STOPPED.value)
                .values(
                    status=status.value,
                    current_jobs=dumps(list(current_jobs)),
                    heartbeat_at=now,
                    stopped_at=None,
                )
            ).rowcount
        return bool(found)

    def stop_worker(self, worker_id: str, now: datetime) -> None:
        with self._tx(write=True) as conn:
            conn.execute(
                workers.update()
                .where(workers.c.id == worker_id)
                .values(
                    status=WorkerStatus.STOPPED.value,
                    current_jobs=dumps([]),
                    heartbeat_at=now,
                    stopped_at=now,
                )
            )

    def list_workers(
        self,
        *,
        pool: str | None = None,
        node: str | None = None,
        include_stopped: bool = False,
        limit: int = 500,
    ) -> list[WorkerInfo]:
        query = sa.select(workers).order_by(workers.c.node, workers.c.id).limit(limit)
        if pool is not None:
            query = query.where(workers.c.pool == pool)
        if node is not None:
            query = query.where(workers.c.node == node)
        if not include_stopped:
            query = query.where(workers.c.status != WorkerStatus.STOPPED.value)
        with self._tx(write=False) as conn:
            return [_worker_from_row(r._mapping) for r in conn.execute(query)]

    def mark_lost_workers(self, stale_before: datetime, now: datetime) -> list[str]:
        w = workers.c
        stale = (w.status.in_(LIVE_WORKER_STATUSES), w.heartbeat_at < stale_before)
        with self._tx(write=True) as conn:
            # A row locked by a heartbeat in progress is alive: skip it.
            ids = list(
                conn.execute(
                    sa.select(w.id)
                    .where(*stale)
                    .order_by(w.heartbeat_at)
                    .limit(LOST_BATCH)
                    .with_for_update(skip_locked=True)
                ).scalars()
            )
            if ids:
                # Conditional again: a heartbeat that committed since the read keeps it live.
                conn.execute(
                    workers.update()
                    .where(w.id.in_(ids), *stale)
                    .values(status=WorkerStatus.LOST.value, stopped_at=now)
                )
        return ids

    def prune_workers(self, before: datetime) -> int:
        w = workers.c
        gone = (WorkerStatus.STOPPED.value, WorkerStatus.LOST.value)
        with self._tx(write=True) as conn:
            return int(
                conn.execute(
                    workers.delete().where(w.status.in_(gone), w.heartbeat_at < before)
                ).rowcount
            )

    # -- live workers of pools ----------------------------------------------------------------

    @staticmethod
    def _live_count(conn: Connection, name: str, stale_before: datetime) -> int:
        query = sa.select(sa.func.count()).select_from(
            live_workers(stale_before).where(workers.c.pool == name).subquery()
        )
        return int(conn.execute(query).scalar_one())

    @staticmethod
    def _live_counts(conn: Connection, stale_before: datetime) -> dict[str, int]:
        query = (
            sa.select(workers.c.pool, sa.func.count())
            .where(
                workers.c.pool.is_not(None),
                workers.c.status.in_(LIVE_WORKER_STATUSES),
                workers.c.heartbeat_at >= stale_before,
            )
            .group_by(workers.c.pool)
        )
        return {pool: int(n) for pool, n in conn.execute(query)}


def live_workers(stale_before: datetime) -> sa.Select[Any]:
    """The ids of the workers live at `stale_before` (filter it further by pool or node)."""
    return sa.select(workers.c.id).where(
        workers.c.status.in_(LIVE_WORKER_STATUSES), workers.c.heartbeat_at >= stale_before
    )


def _worker_from_row(row: Mapping[Any, Any]) -> WorkerInfo:
    return WorkerInfo(
        id=row["id"],
        node=row["node"],
        pool=row["pool"],
        pid=row["pid"],
        job_types=list(loads(row["job_types"]) or []),
        concurrency=row["concurrency"],
        status=WorkerStatus(row["status"]),
        current_jobs=list(loads(row["current_jobs"]) or []),
        started_at=row["started_at"],
        heartbeat_at=row["heartbeat_at"],
        stopped_at=row["stopped_at"],
    )
