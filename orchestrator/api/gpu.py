"""Routes for GPUs, leases and the admission policy."""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from orchestrator.admission import Book
from orchestrator.api.jobs import ERRORS, JOB_ID_PATTERN
from orchestrator.api.lease_waits import LeaseWaits
from orchestrator.api.schemas import PriorityLabel, utc
from orchestrator.api.security import ANY_ROLE, Admin, AnyRole
from orchestrator.errors import Conflict, Forbidden
from orchestrator.gpu import HEALTH_OK, Device
from orchestrator.jobs import Priority
from orchestrator.lease_service import LeaseService
from orchestrator.leases import AdmissionPolicy, Denial, Lease, LeaseRequest, LeaseStatus
from orchestrator.wiring import Services

router = APIRouter(tags=["gpu"])

LEASE_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    409: {"description": "denied: `{granted: false, reason, message, estimated_wait_ms}`"},
    503: {"description": "SAFE_MODE or degraded GPUs: `{granted: false, reason, message}`"},
}
HEARTBEAT_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    408: {"description": "the lease expired (`lease_expired`): stop using its devices"},
    409: {"description": "the lease was released (`lease_released`)"},
}
TOKEN_PATTERN = r"^[0-9a-f]{32}$"
Token = Annotated[str, Field(pattern=TOKEN_PATTERN)]


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def _leases(request: Request) -> LeaseService:
    return _services(request).leases


# -- views --------------------------------------------------------------------------------


class GpuView(BaseModel):
    node: str
    index: int
    name: str
    uuid: str | None
    memory_total_mb: int
    memory_used_mb: int
    utilization_gpu_pct: float | None
    temperature_c: float | None
    power_draw_w: float | None
    source: str
    health: str
    error: str | None
    reported_at: datetime | None
    stale: bool
    quarantined: bool = Field(description="No new leases until an admin clears it.")
    quarantine_reason: str | None
    quarantined_since: datetime | None

    @classmethod
    def of(cls, d: Device, stale_before: datetime) -> GpuView:
        return cls(
            node=d.node,
            index=d.index,
            name=d.name,
            uuid=d.uuid,
            memory_total_mb=d.memory_total_mb,
            memory_used_mb=d.memory_used_mb,
            utilization_gpu_pct=d.utilization_gpu_pct,
            temperature_c=d.temperature_c,
            power_draw_w=d.power_draw_w,
            source=d.source,
            health=d.health,
            error=d.error,
            reported_at=utc(d.reported_at),
            stale=d.reported_at < stale_before,
            quarantined=d.quarantined,
            quarantine_reason=d.quarantine_reason,
            quarantined_since=utc(d.quarantined_since),
        )


class NodeView(BaseModel):
    name: str
    nvml_supported: bool
    mps_enabled: bool
    driver_version: str | None
    error: str | None
    reported_at: datetime | None


class GpuInfo(BaseModel):
    gpus: list[GpuView]
    available: bool = Field(description="Some fresh, healthy device can take leases.")
    nvml_supported: bool
    mps_enabled: bool
    mps: dict[str, Any] = Field(description="What each node saw of CUDA MPS.")
    nodes: list[NodeView]


class LeaseView(BaseModel):
    granted: bool
    token: str
    agent: str
    owner: str
    status: str
    node: str | None
    devices: list[int]
    est_vram_mb: int
    gpu_count: int
    priority: PriorityLabel
    ttl_s: float
    operation: str | None
    model_id: str | None
    job_id: str | None
    queued_at: datetime | None
    created_at: datetime | None
    granted_at: datetime | None
    expires_at: datetime | None
    released_at: datetime | None
    used_vram_mb: int | None
    peak_vram_mb: int | None
    success: bool | None
    reason: str | None
    estimated_duration_s: float | None = None

    @classmethod
    def of(cls, lease: Lease) -> LeaseView:
        return cls(
            granted=lease.status is LeaseStatus.ACTIVE,
            token=lease.token,
            agent=lease.agent,
            owner=lease.owner,
            status=lease.status.value,
            node=lease.node,
            devices=list(lease.devices),
            est_vram_mb=lease.est_vram_mb,
            gpu_count=lease.gpu_count,
            priority=lease.priority.label,
            ttl_s=lease.ttl_s,
            operation=lease.operation,
            model_id=lease.model_id,
            job_id=lease.job_id,
            queued_at=utc(lease.queued_at),
            created_at=utc(lease.created_at),
            granted_at=utc(lease.granted_at),
            expires_at=utc(lease.expires_at),
            released_at=utc(lease.released_at),
            used_vram_mb=lease.used_vram_mb,
            peak_vram_mb=lease.peak_vram_mb,
            success=lease.success,
            reason=lease.reason,
            estimated_duration_s=lease.estimated_duration_s,
        )


class LeasesView(BaseModel):
    leases: list[LeaseView]


class DeviceState(GpuView):
    leased_mb: int = Field(description="VRAM held by every active lease on it, any owner's.")
    leasable_mb: int = Field(description="VRAM a new lease could take now (0 if unusable).")
    leases: list[LeaseView] = Field(description="The leases on it (a non-admin: its own only).")
    other_owners_leases: int = Field(
        0, description="Active leases on it of other owners (not listed for a non-admin)."
    )


class GpuState(BaseModel):
    gpus: list[DeviceState]
    waiting: list[LeaseView] = Field(description="Waiting requests (a non-admin: its own only).")
    other_owners_waiting: int = Field(
        0, description="Waiting requests of other owners (not listed for a non-admin)."
    )
    safe_mode: bool
    headroom_mb: int


class PolicyView(BaseModel):
    policy: AdmissionPolicy
    version: int
    read_only: bool = Field(description="True under SAFE_MODE.")


# -- requests -----------------------------------------------------------------------------


class LeaseBody(BaseModel):
    """A lease request: `est_vram_mb` on each of `gpu_count` devices of one node."""

    model_config = ConfigDict(extra="forbid")

    agent: Annotated[str, Field(min_length=1, max_length=128)]
    est_vram_mb: Annotated[int, Field(ge=1, le=16 << 20)]
    gpu_count: Annotated[int, Field(ge=1, le=16)] = 1
    ttl_s: Annotated[float, Field(gt=0)] | None = Field(
        None, description="Seconds it lives without a heartbeat. Default ORCH_LEASE_DEFAULT_TTL_S."
    )
    priority: PriorityLabel = "normal"
    wait_s: Annotated[float, Field(ge=0)] = Field(
        0.0, description="Queue up to this long for capacity (0: answer at once)."
    )
    operation: Annotated[str, Field(max_length=128)] | None = None
    model_id: Annotated[str, Field(min_length=1, max_length=255)] | None = None
    job_id: Annotated[str, Field(pattern=JOB_ID_PATTERN)] | None = None
    node: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    estimated_duration_s: Annotated[float, Field(gt=0, le=366 * 86400)] | None = Field(
        None, description="How long it will hold the lease: the shortest_first policy."
    )


class HeartbeatBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    used_vram_mb: Annotated[int, Field(ge=0, le=16 << 20)] | None = Field(
        None, description="VRAM the holder uses now (sharpens admission on its devices)."
    )


class ReleaseBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    peak_vram_mb: Annotated[int, Field(ge=0, le=16 << 20)] | None = None
    success: bool | None = None


# -- GPUs -------------------------------------------------------------------------------


@router.get("/gpu/info", response_model=GpuInfo, responses=ERRORS, dependencies=[Depends(ANY_ROLE)])
def gpu_info(request: Request) -> GpuInfo:
    """Every node's GPUs as last reported, and whether any can take leases now."""
    services = _services(request)
    stale_before = services.clock.now() - timedelta(seconds=services.settings.gpu_stale_s)
    devices = services.store.list_devices()
    nodes = services.store.list_nodes()
    views = [GpuView.of(d, stale_before) for d in devices]
    return GpuInfo(
        gpus=views,
        available=any(not v.stale and v.health == HEALTH_OK and not v.quarantined for v in views),
        nvml_supported=any(n.nvml_supported for n in nodes),
        mps_enabled=any(n.mps_enabled for n in nodes),
        mps={n.name: {"enabled": n.mps_enabled, **n.mps} for n in nodes},
        nodes=[
            NodeView(
                name=n.name,
                nvml_supported=n.nvml_supported,
                mps_enabled=n.mps_enabled,
                driver_version=n.driver_version,
                error=n.error,
                reported_at=utc(n.reported_at),
            )
            for n in nodes
        ],
    )


@router.get("/gpu_state", response_model=GpuState, responses=ERRORS)
def gpu_state(request: Request, who: AnyRole) -> GpuState:
    """Each device with the leases held on it, and the requests waiting for capacity. A
    non-admin sees its own leases in detail; other owners' only as counts and `leased_mb`."""
    services = _services(request)
    owner = who.sees_owner
    settings = services.settings
    now = services.clock.now()
    stale_before = now - timedelta(seconds=settings.gpu_stale_s)
    current = services.store.list_leases((LeaseStatus.ACTIVE, LeaseStatus.WAITING))
    # A lease past its expiry holds nothing, as admission sees it, even before the sweep.
    active = [lease for lease in current if lease.is_live(now)]
    policy, _ = services.store.get_policy()
    devices = services.store.list_devices()
    book = Book(devices, active, policy, services.leases.limits, now)
    leasable = {
        d.key: max(0, free)
        for d, free in book.devices()
        if d.health == HEALTH_OK and not d.quarantined
    }
    states = []
    for d in devices:
        on_it = [lease for lease in active if lease.node == d.node and d.index in lease.devices]
        shown = [lease for lease in on_it if owner is None or lease.owner == owner]
        states.append(
            DeviceState(
                **GpuView.of(d, stale_before).model_dump(),
                leased_mb=sum(lease.est_vram_mb for lease in on_it),
                leasable_mb=leasable.get(d.key, 0),
                leases=[LeaseView.of(lease) for lease in shown],
                other_owners_leases=len(on_it) - len(shown),
            )
        )
    waiting = [lease for lease in current if lease.status is LeaseStatus.WAITING]
    waiting_shown = [lease for lease in waiting if owner is None or lease.owner == owner]
    return GpuState(
        gpus=states,
        waiting=[LeaseView.of(lease) for lease in waiting_shown],
        other_owners_waiting=len(waiting) - len(waiting_shown),
        safe_mode=settings.safe_mode,
        headroom_mb=settings.gpu_headroom_mb,
    )


# -- leases -----------------------------------------------------------------------------


def _denial_response(denial: Denial) -> JSONResponse:
    status = 503 if denial.unavailable else 409
    return JSONResponse(
        {
            "granted": False,
            "error": "lease_unavailable" if denial.unavailable else "lease_denied",
            "reason": denial.reason.value,
            "message": denial.message,
            "estimated_wait_ms": denial.estimated_wait_ms,
        },
        status_code=status,
    )


@router.post("/leases", status_code=201, response_model=LeaseView, responses=LEASE_ERRORS)
async def request_lease(body: LeaseBody, request: Request, who: AnyRole) -> Any:
    """Take a lease on `gpu_count` devices of one node with `est_vram_mb` free on each. With
    `wait_s`, queue until capacity frees (served in priority order, first come first served
    within a band). Heartbeat it within `ttl_s`, release it when done. A caller that hangs
    up while it waits gives its place up."""
    leases = _leases(request)
    if body.job_id is not None and not who.is_admin:
        # A job's lease is its worker's (through the store) and only an admin may heartbeat or
        # release it through the API; usage and explain follow it. So naming a job is an
        # admin's act: refused alike for any id, which says nothing about whose job it is.
        raise Forbidden("job_id is for the leases workers take for jobs; only an admin may set it")
    ask = LeaseRequest(
        agent=body.agent,
        est_vram_mb=body.est_vram_mb,
        gpu_count=body.gpu_count,
        ttl_s=body.ttl_s or leases.settings.lease_default_ttl_s,
        priority=Priority.from_label(body.priority),
        wait_s=body.wait_s,
        operation=body.operation,
        model_id=body.model_id,
        job_id=body.job_id,
        node=body.node,
        owner=who.owner,
        estimated_duration_s=body.estimated_duration_s,
    )
    started = time.monotonic()
    # Database calls run on the thread pool; a wait runs on the event loop, so any number
    # of queued requests holds no thread (and heartbeats of others are still served).
    waits: LeaseWaits = request.app.state.lease_waits
    outcome = await waits.run(leases.begin, ask)
    if outcome.lease is not None and outcome.lease.status is LeaseStatus.WAITING:
        outcome = await waits.wait(
            outcome.lease.token, started + ask.wait_s, request.is_disconnected
        )
    outcome = leases.settle(ask, outcome, started)
    if outcome.granted:
        assert outcome.lease is not None
        return LeaseView.of(outcome.lease)
    assert outcome.denial is not None
    return _denial_response(outcome.denial)


@router.get("/leases", response_model=LeasesView, responses=ERRORS)
def list_leases(
    request: Request,
    who: AnyRole,
    status: Annotated[list[LeaseStatus] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1)] = 500,
) -> LeasesView:
    """Active leases (or those of the given statuses), oldest first, at most `limit`
    (capped at ORCH_MAX_PAGE_SIZE); the caller's own unless it is an admin."""
    services = _services(request)
    limit = min(limit, services.settings.max_page_size)
    statuses = tuple(status or (LeaseStatus.ACTIVE,))
    found = services.store.list_leases(statuses, limit, owner=who.sees_owner)
    return LeasesView(leases=[LeaseView.of(lease) for lease in found])


@router.get("/leases/{token}", response_model=LeaseView, responses=ERRORS)
def get_lease(token: Token, request: Request, who: AnyRole) -> LeaseView:
    """The lease (404 unless the caller answers for it, or is an admin)."""
    return LeaseView.of(_leases(request).get(token, who.sees_owner))


@router.post("/leases/{token}/heartbeat", response_model=LeaseView, responses=HEARTBEAT_ERRORS)
def heartbeat_lease(
    token: Token, request: Request, who: AnyRole, body: HeartbeatBody | None = None
) -> LeaseView:
    """Extend the lease by its ttl. 408 if it already expired (stop using the devices and
    take a new one), 404 if unknown or another owner's, 409 if released."""
    used = body.used_vram_mb if body else None
    return LeaseView.of(_leases(request).heartbeat(token, used, owner=who.sees_owner))


@router.post("/leases/{token}/release", response_model=LeaseView, responses=ERRORS)
def release_lease(
    token: Token, request: Request, who: AnyRole, body: ReleaseBody | None = None
) -> LeaseView:
    """Give the devices back, with the peak VRAM used and whether the work succeeded.
    Idempotent: releasing again answers the lease as it is."""
    body = body or ReleaseBody()
    return LeaseView.of(
        _leases(request).release(
            token, peak_vram_mb=body.peak_vram_mb, success=body.success, owner=who.sees_owner
        )
    )


# -- policy -----------------------------------------------------------------------------


@router.get(
    "/policy", response_model=PolicyView, responses=ERRORS, dependencies=[Depends(ANY_ROLE)]
)
def get_policy(request: Request) -> PolicyView:
    """The admission policy in force (ageing, quotas) and its version."""
    services = _services(request)
    policy, version = services.store.get_policy()
    return PolicyView(policy=policy, version=version, read_only=services.settings.safe_mode)


@router.post("/policy", response_model=PolicyView, responses=ERRORS)
def put_policy(
    body: AdmissionPolicy,
    request: Request,
    who: Admin,
    expected_version: Annotated[int | None, Query(ge=0)] = None,
) -> PolicyView:
    """Replace the admission policy (validated; persisted; used by every replica from the
    next decision). With `expected_version`, only if nobody changed it meanwhile (409).
    Refused under SAFE_MODE."""
    services = _services(request)
    if services.settings.safe_mode:
        raise Conflict("SAFE_MODE is on: the policy is read-only", reason="safe_mode")
    version = services.store.put_policy(
        body, services.clock.now(), actor=who.owner, expected_version=expected_version
    )
    return PolicyView(policy=body, version=version, read_only=False)
