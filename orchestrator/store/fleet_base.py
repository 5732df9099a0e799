"""The storage boundary for the fleet: worker pools and worker registrations."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from orchestrator.fleet import (
    Demand,
    Pool,
    PoolActivity,
    PoolChange,
    PoolLimits,
    PoolSpec,
    WorkerInfo,
    WorkerRegistration,
    WorkerStatus,
)


class FleetStore(Protocol):
    """Worker pools and the workers that registered.

    `stale_before` is `now - visibility_timeout_s`: a worker whose last heartbeat is older
    is not live, whatever its row says. `max_total` is `pool_max_total_workers`.
    """

    # -- pools ------------------------------------------------------------------------------

    def create_pool(self, spec: PoolSpec, now: datetime, *, max_total: int) -> Pool:
        """Add an active pool. Raises `PoolExists`, or `Conflict` when the desired sizes of
        the active pools would add up to more than `max_total`."""
        ...

    def get_pool(self, name: str, stale_before: datetime) -> Pool | None: ...

    def list_pools(self, stale_before: datetime, *, node: str | None = None) -> list[Pool]:
        """Every pool by name; with `node`, those that node's supervisor keeps (the pools of
        that node and the pools of no node)."""
        ...

    def scale_pool(
        self, name: str, desired: int, now: datetime, stale_before: datetime, *, max_total: int
    ) -> Pool:
        """Set how many workers the pool wants. Raises `PoolNotFound`; `InvalidRequest`
        outside [min_warm, max_workers]; `Conflict` over `max_total` (active pools)."""
        ...

    def update_pool_limits(
        self, name: str, limits: PoolLimits, now: datetime, stale_before: datetime
    ) -> Pool:
        """Change the autoscaling bounds; `desired` is clamped into the new ones. Raises
        `PoolNotFound`, or `InvalidRequest` when min_warm would exceed max_workers."""
        ...

    def drain_pool(self, name: str, now: datetime, stale_before: datetime) -> Pool:
        """Active: workers finish their jobs and exit (`draining`, then `stopped` once no
        worker is live; at once when none is). Draining or stopped: unchanged."""
        ...

    def stop_pool(self, name: str, now: datetime, stale_before: datetime) -> Pool:
        """`stopped` at once: its workers give their jobs back and exit."""
        ...

    def resume_pool(
        self, name: str, now: datetime, stale_before: datetime, *, max_total: int
    ) -> Pool:
        """Draining or stopped: `active` again at its `desired`. Raises `Conflict` over
        `max_total`."""
        ...

    def delete_pool(self, name: str, stale_before: datetime) -> None:
        """Remove a stopped pool that has no live worker; else `Conflict`."""
        ...

    def finish_drain(self, name: str, now: datetime, stale_before: datetime) -> bool:
        """A draining pool with no live worker becomes `stopped`; whether it did."""
        ...

    # -- the leader's pool policy ---------------------------------------------------------------

    def job_demand(self, now: datetime) -> dict[str, Demand]:
        """By job type: jobs due and waiting to be claimed, and jobs running."""
        ...

    def apply_pool_changes(
        self, changes: Sequence[PoolChange], activity: Sequence[PoolActivity], now: datetime
    ) -> list[str]:
        """In one transaction: each resize where its pool is still active at the expected
        size, and the bookkeeping. Returns the names of the pools resized."""
        ...

    def mark_lost_workers(self, stale_before: datetime, now: datetime) -> list[str]:
        """Running or draining workers with no heartbeat since `stale_before` become `lost`;
        returns their ids."""
        ...

    def prune_workers(self, before: datetime) -> int:
        """Delete the rows of workers stopped or lost before `before`; how many."""
        ...

    # -- workers ----------------------------------------------------------------------------

    def register_worker(self, worker: WorkerRegistration, now: datetime) -> None:
        """Insert the worker's row as `running` (or renew it, under the same id)."""
        ...

    def heartbeat_worker(
        self, worker_id: str, status: WorkerStatus, current_jobs: Sequence[str], now: datetime
    ) -> bool:
        """Refresh a registered worker's heartbeat, status and current jobs (a `lost` one
        is live again). False when it has no row, or a `stopped` one: register again."""
        ...

    def stop_worker(self, worker_id: str, now: datetime) -> None:
        """The worker exited: `stopped`, with no current jobs."""
        ...

    def list_workers(
        self,
        *,
        pool: str | None = None,
        node: str | None = None,
        include_stopped: bool = False,
        limit: int = 500,
    ) -> list[WorkerInfo]:
        """Workers by node, pool and id; stopped ones only with `include_stopped`."""
        ...
