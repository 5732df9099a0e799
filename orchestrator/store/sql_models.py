"""The model preloads and warm models side of `SqlStore`."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from orchestrator.errors import InvalidRequest
from orchestrator.fleet import WorkerStatus
from orchestrator.jobs import JobStatus
from orchestrator.models import (
    MAX_ERROR_CHARS,
    ModelDemand,
    ModelOverview,
    ModelPlacement,
    ModelPreload,
    PreloadStatus,
    WarmModel,
)
from orchestrator.store import dialect
from orchestrator.store.codec import loads
from orchestrator.store.sql_base import SqlBase
from orchestrator.store.tables import jobs, model_evictions, model_preloads, warm_models, workers

T = TypeVar("T")
P = PreloadStatus


class SqlModels(SqlBase):
    # -- preload requests ---------------------------------------------------------------

    def queue_preloads(self, requests: Sequence[tuple[str, str]], now: datetime) -> None:
        if not requests:
            return

        def run() -> None:
            with self._tx(write=True) as conn:
                found = _locked_preloads(conn, [m for m, _ in requests])
                new_rows = []
                # Only over an older job's row: a worker of this very job may have got here
                # first (the job is published before this runs), and its progress stands.
                for model_id, job_id in requests:
                    row = found.get(model_id)
                    if row is None:
                        new_rows.append(_preload_row(model_id, job_id, P.QUEUED, now))
                    elif row["job_id"] is None or row["job_id"] < job_id:
                        _update_preload(
                            conn, model_id, _preload_row(model_id, job_id, P.QUEUED, now)
                        )
                if new_rows:
                    conn.execute(model_preloads.insert(), new_rows)

        _once_more_on_duplicate(run)

    def mark_preload_loading(self, model_id: str, job_id: str, node: str, now: datetime) -> bool:
        return self._advance(
            model_id, job_id, now, {"status": P.LOADING.value, "node": node, "error": None}
        )

    def mark_preload_done(self, model_id: str, job_id: str, node: str, now: datetime) -> bool:
        return self._advance(
            model_id,
            job_id,
            now,
            {"status": P.DONE.value, "node": node, "error": None},
            after_done=True,
        )

    def mark_preload_failed(
        self, model_id: str, job_id: str, node: str, error: str, now: datetime
    ) -> bool:
        values = {"status": P.FAILED.value, "node": node, "error": error[:MAX_ERROR_CHARS]}
        return self._advance(model_id, job_id, now, values)

    def _advance(
        self,
        model_id: str,
        job_id: str,
        now: datetime,
        values: dict[str, Any],
        *,
        after_done: bool = False,
    ) -> bool:
        """Write a preload's progress for job `job_id`, unless a newer job holds the row, or
        (without `after_done`) this job already finished it: a late, reclaimed attempt must
        not turn a load that succeeded into a failure."""

        def run() -> bool:
            with self._tx(write=True) as conn:
                row = _locked_preloads(conn, [model_id]).get(model_id)
                if row is None:
                    row_values = {**_preload_row(model_id, job_id, P.QUEUED, now), **values}
                    conn.execute(model_preloads.insert().values(**row_values))
                    return True
                current = row["job_id"]
                if current is not None and current > job_id:
                    return False
                if current == job_id and row["status"] == P.DONE.value and not after_done:
                    return False
                changes = {**values, "job_id": job_id, "updated_at": now}
                if current != job_id:
                    changes["requested_at"] = now  # this job's request, not the older one's
                _update_preload(conn, model_id, changes)
                return True

        return _once_more_on_duplicate(run)

    # -- warm models ----------------------------------------------------------------------

    def record_warm(
        self, node: str, model_id: str, worker_id: str | None, size_bytes: int | None, now: datetime
    ) -> None:
        values = {"worker_id": worker_id, "size_bytes": size_bytes, "loaded_at": now}

        def run() -> None:
            with self._tx(write=True) as conn:
                updated = conn.execute(
                    warm_models.update()
                    .where(warm_models.c.node == node, warm_models.c.model_id == model_id)
                    .values(**values)
                ).rowcount
                if not updated:
                    conn.execute(
                        warm_models.insert().values(node=node, model_id=model_id, **values)
                    )

        _once_more_on_duplicate(run)

    def forget_warm(
        self,
        *,
        node: str | None = None,
        model_id: str | None = None,
        worker_ids: Sequence[str] | None = None,
    ) -> int:
        if node is None and model_id is None and worker_ids is None:
            raise InvalidRequest("forget_warm needs a node, a model or workers")
        if worker_ids is not None and not worker_ids:
            return 0
        conditions = []
        if node is not None:
            conditions.append(warm_models.c.node == node)
        if model_id is not None:
            conditions.append(warm_models.c.model_id == model_id)
        if worker_ids is not None:
            conditions.append(warm_models.c.worker_id.in_(worker_ids))
        with self._tx(write=True) as conn:
            gone = conn.execute(
                sa.select(warm_models.c.node, warm_models.c.model_id).where(*conditions)
            ).all()
            removed = int(conn.execute(warm_models.delete().where(*conditions)).rowcount)
            # A pending eviction of a record that goes has nothing left to evict: drop it, so
            # a later load of the model there is not evicted (or blocked) by a stale row.
            for r in gone:
                conn.execute(
                    model_evictions.delete().where(
                        model_evictions.c.node == r.node, model_evictions.c.model_id == r.model_id
                    )
                )
            return removed

    # -- reading ------------------------------------------------------------------------

    def model_overview(self, model_ids: Sequence[str] | None = None) -> ModelOverview:
        preloads_query = (
            sa.select(model_preloads, jobs.c.status.label("job_status"), jobs.c.error.label("je"))
            .select_from(model_preloads.outerjoin(jobs, jobs.c.id == model_preloads.c.job_id))
            .order_by(model_preloads.c.model_id)
        )
        warm_query = sa.select(warm_models).order_by(warm_models.c.node, warm_models.c.model_id)
        if model_ids is not None:
            preloads_query = preloads_query.where(model_preloads.c.model_id.in_(model_ids))
            warm_query = warm_query.where(warm_models.c.model_id.in_(model_ids))
        with self._tx(write=False) as conn:
            preloads = [_preload_from_row(r._mapping) for r in conn.execute(preloads_query)]
            warm = [_warm_from_row(r._mapping) for r in conn.execute(warm_query)]
        return ModelOverview(preloads, warm)

    def model_placement(self, model_id: str, job_type: str, live_after: datetime) -> ModelPlacement:
        warm_query = sa.select(warm_models.c.node).where(warm_models.c.model_id == model_id)
        with self._tx(write=False) as conn:
            warm_on = frozenset(str(n) for n in conn.execute(warm_query).scalars())
            if not warm_on:
                return ModelPlacement()
            live_query = sa.select(workers.c.node, workers.c.job_types).where(
                workers.c.node.in_(warm_on),
                workers.c.status == WorkerStatus.RUNNING.value,  # draining ones take no jobs
                workers.c.heartbeat_at >= live_after,
            )
            live = conn.execute(live_query).all()
        serving = frozenset(str(node) for node, types in live if job_type in _types(types))
        return ModelPlacement(warm_on, serving)

    def model_demand(self, job_id: str) -> ModelDemand | None:
        query = sa.select(jobs.c.id, jobs.c.type, jobs.c.gpu, jobs.c.available_at).where(
            jobs.c.id == job_id
        )
        with self._tx(write=False) as conn:
            row = conn.execute(query).first()
        if row is None:
            return None
        gpu = loads(row.gpu)
        model_id = gpu.get("model_id") if isinstance(gpu, dict) else None
        return ModelDemand(row.id, row.type, model_id or None, row.available_at)


def _once_more_on_duplicate(run: Callable[[], T]) -> T:
    """Run a transaction that may insert a row a concurrent one inserts too (MariaDB: neither
    saw the other's); the second try sees it and updates instead. SQLite's write lock
    serialises them, so this never happens there."""
    try:
        return run()
    except sa.exc.IntegrityError as exc:
        if not dialect.is_duplicate_key(exc):
            raise
        return run()


def _locked_preloads(conn: Connection, model_ids: Sequence[str]) -> dict[str, Mapping[Any, Any]]:
    query = (
        sa.select(model_preloads).where(model_preloads.c.model_id.in_(model_ids)).with_for_update()
    )
    return {r.model_id: r._mapping for r in conn.execute(query)}


def _update_preload(conn: Connection, model_id: str, values: Mapping[str, Any]) -> None:
    changes = {k: v for k, v in values.items() if k != "model_id"}
    conn.execute(
        model_preloads.update().where(model_preloads.c.model_id == model_id).values(**changes)
    )


def _preload_row(
    model_id: str, job_id: str, status: PreloadStatus, now: datetime
) -> dict[str, Any]:
    return {
        "model_id": model_id,
        "status": status.value,
        "job_id": job_id,
        "node": None,
        "error": None,
        "requested_at": now,
        "updated_at": now,
    }


def _preload_from_row(row: Mapping[Any, Any]) -> ModelPreload:
    return ModelPreload(
        model_id=row["model_id"],
        status=P(row["status"]),
        job_id=row["job_id"],
        node=row["node"],
        error=row["error"],
        requested_at=row["requested_at"],
        updated_at=row["updated_at"],
        job_status=JobStatus(row["job_status"]) if row["job_status"] else None,
        job_error=row["je"],
    )


def _warm_from_row(row: Mapping[Any, Any]) -> WarmModel:
    return WarmModel(
        node=row["node"],
        model_id=row["model_id"],
        worker_id=row["worker_id"],
        size_bytes=row["size_bytes"],
        loaded_at=row["loaded_at"],
    )


def _types(value: str | None) -> list[str]:
    """A worker's job types (a JSON list); unreadable ones serve nothing."""
    try:
        types = json.loads(value) if value else []
    except ValueError:
        return []
    return [t for t in types if isinstance(t, str)] if isinstance(types, list) else []
