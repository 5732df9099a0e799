"""The lease's vocabulary: what a lease request asks for, what a lease is, the policy.

A lease reserves VRAM on one or more devices of one node for an agent (or a job) until it
is released or, not heartbeated, expires. See `orchestrator.admission` for who gets one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.jobs import Priority


class LeaseStatus(StrEnum):
    WAITING = "waiting"  # queued until capacity frees (wait_s > 0)
    ACTIVE = "active"
    RELEASED = "released"
    EXPIRED = "expired"  # not heartbeated within its ttl
    TIMED_OUT = "timed_out"  # waited wait_s and was never granted


class DenyReason(StrEnum):
    """Why a request was not granted (the `reason` of a 409 or 503)."""

    INSUFFICIENT_VRAM = "insufficient_vram"  # no device has that much free now
    EXCEEDS_CAPACITY = "exceeds_capacity"  # no device could ever hold it
    NO_GPUS = "no_gpus"  # no fresh, healthy device is known (on that node)
    GANG_UNAVAILABLE = "gang_unavailable"  # no node has gpu_count devices free together
    QUEUED_AHEAD = "queued_ahead"  # requests waiting ahead in policy order come first
    QUOTA_VRAM = "quota_vram"
    QUOTA_LEASES = "quota_leases"
    WAIT_TIMEOUT = "wait_timeout"  # queued for wait_s and never granted
    GPU_DEGRADED = "gpu_degraded"  # 503: the only fitting devices are hot or failing
    GPU_QUARANTINED = "gpu_quarantined"  # 503: the only fitting devices are quarantined
    MODEL_EVICTING = "model_evicting"  # its model is being unloaded on that node
    SAFE_MODE = "safe_mode"  # 503


UNAVAILABLE_REASONS = frozenset(
    {DenyReason.GPU_DEGRADED, DenyReason.GPU_QUARANTINED, DenyReason.SAFE_MODE}
)


@dataclass(frozen=True)
class LeaseRequest:
    """A validated request for a lease. `est_vram_mb` is per device."""

    agent: str
    est_vram_mb: int
    gpu_count: int = 1
    # Who answers for it: the authenticated caller's owner name (a job's lease: the job's
    # owner). Only it, or an admin, may heartbeat or release the lease.
    owner: str = "anonymous"
    ttl_s: float = 60.0
    priority: Priority = Priority.NORMAL
    wait_s: float = 0.0
    operation: str | None = None
    model_id: str | None = None
    job_id: str | None = None
    node: str | None = None  # None: any node
    queued_at: datetime | None = None  # its place in the queue; None: now
    # (node, index) to place it elsewhere than, if another device fits (an OOM retry).
    avoid: tuple[tuple[str, int], ...] = ()
    # The holder's guess of how long it keeps the lease (the `shortest_first` policy).
    estimated_duration_s: float | None = None


@dataclass(frozen=True)
class Lease:
    """A lease (or a waiting request) as stored."""

    token: str
    agent: str
    status: LeaseStatus
    est_vram_mb: int
    gpu_count: int
    priority: Priority
    ttl_s: float
    queued_at: datetime
    created_at: datetime
    owner: str = "anonymous"
    node: str | None = None
    devices: tuple[int, ...] = ()
    operation: str | None = None
    model_id: str | None = None
    job_id: str | None = None
    wait_until: datetime | None = None
    granted_at: datetime | None = None
    expires_at: datetime | None = None
    released_at: datetime | None = None
    used_vram_mb: int | None = None
    peak_vram_mb: int | None = None
    success: bool | None = None
    reason: str | None = None
    estimated_duration_s: float | None = None
    attempt: int | None = None  # a job's lease: the attempt it was taken for
    # Not stored: a preference for its first placement only (see LeaseRequest.avoid).
    avoid: tuple[tuple[str, int], ...] = ()

    @property
    def is_active(self) -> bool:
        return self.status is LeaseStatus.ACTIVE

    def is_live(self, now: datetime) -> bool:
        """Active and not past its expiry (the sweep marks those `expired` shortly)."""
        return self.is_active and self.expires_at is not None and self.expires_at >= now

    def outstanding_mb(self) -> int:
        """VRAM this lease may still allocate per device: what it reserved, less what its
        holder reported in use (which the device's measured `used` already shows)."""
        return max(0, self.est_vram_mb - (self.used_vram_mb or 0))


@dataclass(frozen=True)
class Denial:
    """A request not granted: why, and roughly when capacity might free (None: unknown)."""

    reason: DenyReason
    message: str
    estimated_wait_ms: int | None = None
    final: bool = False  # waiting cannot help (it can never fit, or is over its quota alone)
    quota_key: str | None = None  # a quota denial: the policy key (owner, or owner/agent)

    @property
    def unavailable(self) -> bool:
        return self.reason in UNAVAILABLE_REASONS


@dataclass(frozen=True)
class LeaseOutcome:
    """A request's answer: the lease when granted (or still waiting), else the denial."""

    lease: Lease | None
    denial: Denial | None = None
    expired: tuple[Lease, ...] = ()  # leases this decision found expired (for the metric)

    @property
    def granted(self) -> bool:
        return self.lease is not None and self.lease.is_active


MAX_QUOTAS = 10_000


class Quota(BaseModel):
    """Limits on one owner's (or one owner's agent's) active leases; None: no limit."""

    model_config = ConfigDict(extra="forbid")

    max_vram_mb: Annotated[int, Field(ge=0)] | None = None
    max_leases: Annotated[int, Field(ge=0)] | None = None


class QueueOrder(StrEnum):
    """How waiting requests are ordered (docs/scheduling.md has an example of each)."""

    FIFO = "fifo"  # arrival alone: bands and ageing are ignored
    PRIORITY = "priority"  # bands (with ageing), then arrival
    SHORTEST_FIRST = "shortest_first"  # bands (with ageing), then estimated_duration_s
    FAIR_SHARE = "fair_share"  # bands (with ageing), then decayed GPU-seconds / share


Share = Annotated[float, Field(gt=0, le=1_000_000)]


class FairShare(BaseModel):
    """The `fair_share` order's settings: each owner's recent GPU-seconds (decayed with
    `half_life_s`, counted over `window_s`, plus what its active leases held so far) divided
    by its share; the owner furthest below its share goes first."""

    model_config = ConfigDict(extra="forbid")

    half_life_s: Annotated[float, Field(gt=0, le=30 * 86400)] = Field(
        3600.0, description="GPU-seconds used this long ago count half."
    )
    window_s: Annotated[float, Field(gt=0, le=90 * 86400)] = Field(
        86400.0, description="Usage that ended longer ago than this is not counted at all."
    )
    default_share: Share = Field(1.0, description="The share of owners not listed.")
    shares: dict[Annotated[str, Field(min_length=1, max_length=128)], Share] = Field(
        default_factory=dict, max_length=MAX_QUOTAS, description="Per owner (> 0)."
    )
    assumed_duration_s: Annotated[float, Field(gt=0, le=86400)] = Field(
        60.0,
        description="What a grant is charged to its owner within one admission pass when "
        "the request gives no estimated_duration_s (so one pass does not hand every free "
        "device to the same owner).",
    )

    def share_of(self, owner: str) -> float:
        return self.shares.get(owner, self.default_share)


class AdmissionPolicy(BaseModel):
    """The admission policy, changed at run time through `POST /policy` (persisted)."""

    model_config = ConfigDict(extra="forbid")

    order: QueueOrder = Field(
        QueueOrder.PRIORITY,
        description="How waiting requests are ordered: fifo, priority, shortest_first or "
        "fair_share.",
    )
    fair_share: FairShare = Field(
        default_factory=FairShare, description="Used when order is fair_share."
    )

    ageing_s: Annotated[float, Field(gt=0, le=86400)] = Field(
        60.0,
        description="A waiting request moves up one priority band per ageing_s waited, so "
        "nothing starves.",
    )
    default_quota: Quota = Field(default_factory=Quota, description="For owners not listed.")
    quotas: dict[Annotated[str, Field(min_length=1, max_length=257)], Quota] = Field(
        default_factory=dict,
        max_length=MAX_QUOTAS,
        description="Per owner (the token's owner; `anonymous` on an open API), over all its "
        "leases; an `owner/agent` key also limits that one agent name of that owner.",
    )

    def quota_of(self, owner: str) -> Quota:
        """The quota over all of `owner`'s active leases (listed, or the default)."""
        return self.quotas.get(owner, self.default_quota)

    def agent_quota_of(self, owner: str, agent: str) -> Quota | None:
        """The quota over the leases of one agent name of `owner`, if one is listed. Agent
        names are free text: scoped to the owner, no one can spend another's quota."""
        return self.quotas.get(agent_quota_key(owner, agent))


def agent_quota_key(owner: str, agent: str) -> str:
    """The policy's `quotas` key for one agent of one owner."""
    return f"{owner}/{agent}"


ADMISSION_POLICY = "admission"
