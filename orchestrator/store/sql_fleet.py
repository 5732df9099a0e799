"""The worker pools side of `SqlStore` (worker registrations: `sql_workers.py`).

A pool's `running` is counted from its live workers' rows in the same transaction; the
`running` column is the leader's last count, kept for readers of the table alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from orchestrator.errors import Conflict, InvalidRequest, PoolExists, PoolNotFound
from orchestrator.fleet import (
    Demand,
    Pool,
    PoolActivity,
    PoolChange,
    PoolLimits,
    PoolSpec,
    PoolStatus,
)
from orchestrator.jobs import ACTIVE_STATUSES, CLAIMABLE_STATUSES
from orchestrator.store import dialect
from orchestrator.store.codec import dumps, loads
from orchestrator.store.sql_workers import SqlWorkers, live_workers
from orchestrator.store.tables import jobs, worker_pools, workers

P = PoolStatus


class SqlFleet(SqlWorkers):
    """Pools, and (from `SqlWorkers`) the workers' registrations."""

    # -- pools ------------------------------------------------------------------------------

    def create_pool(self, spec: PoolSpec, now: datetime, *, max_total: int) -> Pool:
        row: dict[str, Any] = {
            "name": spec.name,
            "node": spec.node,
            "job_types": dumps(list(spec.job_types)),
            "model_id": spec.model_id,
            "concurrency": spec.concurrency,
            "desired": spec.desired,
            "running": 0,
            "min_warm": spec.min_warm,
            "max_workers": spec.max_workers,
            "idle_timeout_s": spec.idle_timeout_s,
            "status": P.ACTIVE.value,
            "last_busy_at": None,
            "created_at": now,
            "updated_at": now,
        }
        try:
            with self._tx(write=True) as conn:
                locked = self._lock_for_total(conn, spec.name)
                if spec.name in locked:
                    raise PoolExists(f"pool {spec.name} already exists", pool=spec.name)
                _check_total(locked, spec.name, spec.desired, max_total)
                conn.execute(worker_pools.insert().values(**row))
        except sa.exc.IntegrityError as exc:
            # Another create of the same name committed between our read and our insert.
            if dialect.is_duplicate_key(exc):
                raise PoolExists(f"pool {spec.name} already exists", pool=spec.name) from None
            raise
        return _pool_from_row(row, 0)

    def get_pool(self, name: str, stale_before: datetime) -> Pool | None:
        with self._tx(write=False) as conn:
            row = conn.execute(sa.select(worker_pools).where(worker_pools.c.name == name)).first()
            if row is None:
                return None
            return _pool_from_row(row._mapping, self._live_count(conn, name, stale_before))

    def list_pools(self, stale_before: datetime, *, node: str | None = None) -> list[Pool]:
        query = sa.select(worker_pools).order_by(worker_pools.c.name)
        if node is not None:
            query = query.where(sa.or_(worker_pools.c.node == node, worker_pools.c.node.is_(None)))
        with self._tx(write=False) as conn:
            rows = conn.execute(query).all()
            counts = self._live_counts(conn, stale_before)
        return [_pool_from_row(r._mapping, counts.get(r.name, 0)) for r in rows]

    def scale_pool(
        self, name: str, desired: int, now: datetime, stale_before: datetime, *, max_total: int
    ) -> Pool:
        with self._tx(write=True) as conn:
            locked = self._lock_for_total(conn, name)
            row = _found(locked, name)
            if not row["min_warm"] <= desired <= row["max_workers"]:
                raise InvalidRequest(
                    f"desired must be between min_warm ({row['min_warm']}) and max_workers "
                    f"({row['max_workers']}) of pool {name}",
                    min_warm=row["min_warm"],
                    max_workers=row["max_workers"],
                )
            if row["status"] == P.ACTIVE.value and desired > row["desired"]:
                _check_total(locked, name, desired, max_total)
            if desired != row["desired"]:
                self._set_pool(conn, name, {"desired": desired, "updated_at": now})
            return self._reload_pool(conn, name, stale_before)

    def update_pool_limits(
        self, name: str, limits: PoolLimits, now: datetime, stale_before: datetime
    ) -> Pool:
        with self._tx(write=True) as conn:
            row = _found(self._lock_pool(conn, name), name)
            low = row["min_warm"] if limits.min_warm is None else limits.min_warm
            high = row["max_workers"] if limits.max_workers is None else limits.max_workers
            if low > high:
                raise InvalidRequest(
                    f"min_warm ({low}) must not exceed max_workers ({high})",
                    min_warm=low,
                    max_workers=high,
                )
            values: dict[str, Any] = {
                "min_warm": low,
                "max_workers": high,
                # Raised to a new min_warm even past the total cap: the leader's pass trims
                # other pools' surplus first (see orchestrator/pool_policy.py).
                "desired": min(max(row["desired"], low), high),
                "updated_at": now,
            }
            if limits.idle_timeout_s is not None:
                values["idle_timeout_s"] = limits.idle_timeout_s
            self._set_pool(conn, name, values)
            return self._reload_pool(conn, name, stale_before)

    def drain_pool(self, name: str, now: datetime, stale_before: datetime) -> Pool:
        with self._tx(write=True) as conn:
            row = _found(self._lock_pool(conn, name), name)
            if row["status"] == P.ACTIVE.value:
                live = self._live_count(conn, name, stale_before)
                status = P.DRAINING if live else P.STOPPED
                self._set_pool(conn, name, {"status": status.value, "updated_at": now})
            return self._reload_pool(conn, name, stale_before)

    def stop_pool(self, name: str, now: datetime, stale_before: datetime) -> Pool:
        with self._tx(write=True) as conn:
            row = _found(self._lock_pool(conn, name), name)
            if row["status"] != P.STOPPED.value:
                self._set_pool(conn, name, {"status": P.STOPPED.value, "updated_at": now})
            return self._reload_pool(conn, name, stale_before)

    def resume_pool(
        self, name: str, now: datetime, stale_before: datetime, *, max_total: int
    ) -> Pool:
        with self._tx(write=True) as conn:
            locked = self._lock_for_total(conn, name)
            row = _found(locked, name)
            if row["status"] != P.ACTIVE.value:
                _check_total(locked, name, row["desired"], max_total)
                self._set_pool(conn, name, {"status": P.ACTIVE.value, "updated_at": now})
            return self._reload_pool(conn, name, stale_before)

    def delete_pool(self, name: str, stale_before: datetime) -> None:
        with self._tx(write=True) as conn:
            row = _found(self._lock_pool(conn, name), name)
            if row["status"] != P.STOPPED.value:
                raise Conflict(
                    f"pool {name} is {row['status']}: stop or drain it first",
                    status=row["status"],
                )
            live = self._live_count(conn, name, stale_before)
            if live:
                raise Conflict(
                    f"pool {name} still has {live} live worker(s): wait for them to exit",
                    running=live,
                )
            conn.execute(worker_pools.delete().where(worker_pools.c.name == name))

    def finish_drain(self, name: str, now: datetime, stale_before: datetime) -> bool:
        with self._tx(write=True) as conn:
            done = conn.execute(
                worker_pools.update()
                .where(
                    worker_pools.c.name == name,
                    worker_pools.c.status == P.DRAINING.value,
                    ~sa.exists(live_workers(stale_before).where(workers.c.pool == name)),
                )
                .values(status=P.STOPPED.value, updated_at=now)
            ).rowcount
        return bool(done)

    # -- the leader's pool policy ---------------------------------------------------------------

    def job_demand(self, now: datetime) -> dict[str, Demand]:
        waiting = (
            sa.select(jobs.c.type, sa.func.count())
            .where(jobs.c.status.in_(CLAIMABLE_STATUSES), jobs.c.available_at <= now)
            .group_by(jobs.c.type)
        )
        running = (
            sa.select(jobs.c.type, sa.func.count())
            .where(jobs.c.status.in_(ACTIVE_STATUSES))
            .group_by(jobs.c.type)
        )
        demand: dict[str, Demand] = {}
        with self._tx(write=False) as conn:
            for job_type, n in conn.execute(waiting):
                demand[job_type] = demand.get(job_type, Demand()) + Demand(waiting=int(n))
            for job_type, n in conn.execute(running):
                demand[job_type] = demand.get(job_type, Demand()) + Demand(running=int(n))
        return demand

    def apply_pool_changes(
        self, changes: Sequence[PoolChange], activity: Sequence[PoolActivity], now: datetime
    ) -> list[str]:
        if not changes and not activity:
            return []
        p = worker_pools.c
        applied: list[str] = []
        with self._tx(write=True) as conn:
            for change in changes:
                resized = conn.execute(
                    worker_pools.update()
                    .where(
                        p.name == change.name,
                        p.status == P.ACTIVE.value,
                        p.desired == change.expected_desired,
                    )
                    .values(desired=change.desired, updated_at=now)
                ).rowcount
                if resized:
                    applied.append(change.name)
            for a in activity:
                # Bookkeeping only: `updated_at` says when the size or status last changed.
                conn.execute(
                    worker_pools.update()
                    .where(p.name == a.name, p.running != a.running)
                    .values(running=a.running)
                )
                if a.busy_at is not None:
                    conn.execute(
                        worker_pools.update()
                        .where(
                            p.name == a.name,
                            sa.or_(p.last_busy_at.is_(None), p.last_busy_at < a.busy_at),
                        )
                        .values(last_busy_at=a.busy_at)
                    )
        return applied

    # -- helpers ------------------------------------------------------------------------------

    @staticmethod
    def _lock_pool(conn: Connection, name: str) -> dict[str, Mapping[Any, Any]]:
        row = conn.execute(
            sa.select(worker_pools).where(worker_pools.c.name == name).with_for_update()
        ).first()
        return {} if row is None else {name: row._mapping}

    @staticmethod
    def _lock_for_total(conn: Connection, name: str) -> dict[str, Mapping[Any, Any]]:
        """Lock the pool and every active pool, in name order (so two of these never
        deadlock), to check the total of desired sizes against the cap."""
        rows = conn.execute(
            sa.select(worker_pools)
            .where(sa.or_(worker_pools.c.status == P.ACTIVE.value, worker_pools.c.name == name))
            .order_by(worker_pools.c.name)
            .with_for_update()
        )
        return {r.name: r._mapping for r in rows}

    @staticmethod
    def _set_pool(conn: Connection, name: str, values: dict[str, Any]) -> None:
        conn.execute(worker_pools.update().where(worker_pools.c.name == name).values(**values))

    def _reload_pool(self, conn: Connection, name: str, stale_before: datetime) -> Pool:
        row = conn.execute(sa.select(worker_pools).where(worker_pools.c.name == name)).one()
        return _pool_from_row(row._mapping, self._live_count(conn, name, stale_before))


def _found(locked: dict[str, Mapping[Any, Any]], name: str) -> Mapping[Any, Any]:
    row = locked.get(name)
    if row is None:
        raise PoolNotFound(f"no pool {name}", pool=name)
    return row


def _check_total(
    locked: dict[str, Mapping[Any, Any]], name: str, desired: int, max_total: int
) -> None:
    """Refuse a size that would make the active pools want more than `max_total` workers."""
    others = sum(
        r["desired"] for n, r in locked.items() if n != name and r["status"] == P.ACTIVE.value
    )
    if others + desired > max_total:
        raise Conflict(
            f"pool {name} at {desired} would make the active pools want {others + desired} "
            f"workers; pool_max_total_workers is {max_total}",
            wanted=others + desired,
            max_total=max_total,
        )


def _pool_from_row(row: Mapping[Any, Any], running: int) -> Pool:
    return Pool(
        name=row["name"],
        node=row["node"],
        job_types=list(loads(row["job_types"]) or []),
        model_id=row["model_id"],
        concurrency=row["concurrency"],
        desired=row["desired"],
        running=running,
        min_warm=row["min_warm"],
        max_workers=row["max_workers"],
        idle_timeout_s=row["idle_timeout_s"],
        status=PoolStatus(row["status"]),
        last_busy_at=row["last_busy_at"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )
