"""Routes for worker pools and workers (changes: admins only; reads: any role).

Pools: create, list, show, scale, change bounds, drain, stop, resume, delete. Workers: what
each registered worker is, and what it runs now. `POST /control/pool-policy` runs one pass
of the leader's pool policy on the replica that answers.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response

from orchestrator.api.fleet_schemas import (
    CreatePoolRequest,
    NodeName,
    PolicyReportView,
    PoolDetailView,
    PoolsView,
    PoolView,
    ScaleRequest,
    UpdatePoolRequest,
    WorkersView,
    WorkerView,
)
from orchestrator.api.jobs import ERRORS
from orchestrator.api.security import ADMIN, ANY_ROLE, AnyRole
from orchestrator.auth import Principal
from orchestrator.errors import PoolNotFound
from orchestrator.fleet import POOL_NAME_PATTERN
from orchestrator.wiring import Services

router = APIRouter(tags=["fleet"])

NamePath = Annotated[str, Path(pattern=POOL_NAME_PATTERN.pattern, description="The pool.")]


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def _now_and_stale(services: Services) -> tuple[datetime, datetime]:
    """Now, and the heartbeat age past which a worker is not live."""
    now = services.clock.now()
    return now, now - timedelta(seconds=services.settings.visibility_timeout_s)


def _max_total(services: Services) -> int:
    return services.settings.pool_max_total_workers


def _own_jobs_only(services: Services, views: list[WorkerView], who: Principal) -> list[WorkerView]:
    """For a non-admin, each worker's `current_jobs` less other owners' jobs: their ids are
    theirs to know (404 for anyone else everywhere else). An admin sees them all."""
    owner = who.sees_owner
    if owner is None:
        return views
    store = services.store
    mine = {
        job_id
        for view in views
        for job_id in view.current_jobs
        if (job := store.get_job(job_id)) is not None and job.owner == owner
    }
    for view in views:
        view.current_jobs = [j for j in view.current_jobs if j in mine]
    return views


# -- pools -------------------------------------------------------------------------------------


@router.post(
    "/pools",
    status_code=201,
    response_model=PoolView,
    responses=ERRORS,
    dependencies=[Depends(ADMIN)],
)
def create_pool(body: CreatePoolRequest, request: Request) -> PoolView:
    """Create an active pool. 409 when the name is taken, or when the active pools would
    want more than `ORCH_POOL_MAX_TOTAL_WORKERS` workers in all."""
    services = _services(request)
    services.jobs.limits.check_job_types(body.job_types, "job_types")
    spec = body.spec(services.settings.worker_concurrency)
    pool = services.store.create_pool(spec, services.clock.now(), max_total=_max_total(services))
    return PoolView.of(pool)


@router.get("/pools", response_model=PoolsView, responses=ERRORS, dependencies=[Depends(ANY_ROLE)])
def list_pools(request: Request, node: Annotated[NodeName | None, Query()] = None) -> PoolsView:
    """Every pool by name; with `node`, those that node's supervisor keeps (its own and
    those of no node)."""
    services = _services(request)
    _, stale = _now_and_stale(services)
    return PoolsView(pools=[PoolView.of(p) for p in services.store.list_pools(stale, node=node)])


@router.get("/pools/{name}", response_model=PoolDetailView, responses=ERRORS)
def get_pool(name: NamePath, request: Request, who: AnyRole) -> PoolDetailView:
    """A pool, with its workers that have not stopped."""
    services = _services(request)
    _, stale = _now_and_stale(services)
    pool = services.store.get_pool(name, stale)
    if pool is None:
        raise PoolNotFound(f"no pool {name}", pool=name)
    workers = [WorkerView.of(w, stale) for w in services.store.list_workers(pool=name)]
    workers = _own_jobs_only(services, workers, who)
    return PoolDetailView(**PoolView.of(pool).model_dump(), workers=workers)


@router.post(
    "/pools/{name}/scale", response_model=PoolView, responses=ERRORS, dependencies=[Depends(ADMIN)]
)
def scale_pool(name: NamePath, body: ScaleRequest, request: Request) -> PoolView:
    """Set how many workers the pool wants, within [min_warm, max_workers] (else 422). The
    leader's policy may change it later: up while jobs wait, down to min_warm when idle."""
    services = _services(request)
    now, stale = _now_and_stale(services)
    pool = services.store.scale_pool(name, body.desired, now, stale, max_total=_max_total(services))
    return PoolView.of(pool)


@router.patch(
    "/pools/{name}", response_model=PoolView, responses=ERRORS, dependencies=[Depends(ADMIN)]
)
def update_pool(name: NamePath, body: UpdatePoolRequest, request: Request) -> PoolView:
    """Change the autoscaling bounds (min_warm, max_workers, idle_timeout_s); `desired` is
    clamped into them."""
    services = _services(request)
    now, stale = _now_and_stale(services)
    return PoolView.of(services.store.update_pool_limits(name, body.limits(), now, stale))


@router.post(
    "/pools/{name}/drain", response_model=PoolView, responses=ERRORS, dependencies=[Depends(ADMIN)]
)
def drain_pool(name: NamePath, request: Request) -> PoolView:
    """Workers take no new jobs, finish their running ones and exit; the pool is `draining`
    until none is left, then `stopped`."""
    services = _services(request)
    now, stale = _now_and_stale(services)
    return PoolView.of(services.store.drain_pool(name, now, stale))


@router.post(
    "/pools/{name}/stop", response_model=PoolView, responses=ERRORS, dependencies=[Depends(ADMIN)]
)
def stop_pool(name: NamePath, request: Request) -> PoolView:
    """`stopped` now: its workers give their running jobs back (to run elsewhere) and exit."""
    services = _services(request)
    now, stale = _now_and_stale(services)
    return PoolView.of(services.store.stop_pool(name, now, stale))


@router.post(
    "/pools/{name}/resume", response_model=PoolView, responses=ERRORS, dependencies=[Depends(ADMIN)]
)
def resume_pool(name: NamePath, request: Request) -> PoolView:
    """A draining or stopped pool becomes active again at its desired size."""
    services = _services(request)
    now, stale = _now_and_stale(services)
    pool = services.store.resume_pool(name, now, stale, max_total=_max_total(services))
    return PoolView.of(pool)


@router.delete("/pools/{name}", status_code=204, responses=ERRORS, dependencies=[Depends(ADMIN)])
def delete_pool(name: NamePath, request: Request) -> Response:
    """Remove a stopped pool with no live worker (409 otherwise)."""
    services = _services(request)
    _, stale = _now_and_stale(services)
    services.store.delete_pool(name, stale)
    return Response(status_code=204)


# -- workers and the policy ------------------------------------------------------------------


@router.get("/workers", response_model=WorkersView, responses=ERRORS)
def list_workers(
    request: Request,
    who: AnyRole,
    pool: Annotated[str | None, Query(pattern=POOL_NAME_PATTERN.pattern)] = None,
    node: Annotated[NodeName | None, Query()] = None,
    include_stopped: Annotated[
        bool, Query(alias="all", description="Include workers that stopped.")
    ] = False,
    limit: Annotated[int, Query(ge=1)] = 500,
) -> WorkersView:
    """Registered workers by node and id, each with the jobs it runs now (a non-admin: its
    own jobs only) and whether it is alive (heartbeating). Lost workers stay listed; stopped
    ones only with `all`."""
    services = _services(request)
    _, stale = _now_and_stale(services)
    found = services.store.list_workers(
        pool=pool,
        node=node,
        include_stopped=include_stopped,
        limit=min(limit, services.settings.max_page_size),
    )
    return WorkersView(
        workers=_own_jobs_only(services, [WorkerView.of(w, stale) for w in found], who)
    )


@router.post(
    "/control/pool-policy",
    response_model=PolicyReportView,
    responses=ERRORS,
    dependencies=[Depends(ADMIN)],
)
def run_pool_policy(request: Request) -> PolicyReportView:
    """Run one pass of the pool policy now, on this replica (safe anywhere, any time)."""
    report = _services(request).pool_policy.run()
    return PolicyReportView(
        resized=report.resized,
        lost_workers=report.lost_workers,
        stopped_pools=report.stopped_pools,
        pruned_workers=report.pruned_workers,
    )
