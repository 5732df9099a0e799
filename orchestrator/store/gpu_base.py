"""The storage boundary for GPUs: node reports, devices, leases and the admission policy."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from orchestrator.admission import Limits
from orchestrator.gpu import Device, Node, NodeReading
from orchestrator.leases import AdmissionPolicy, Lease, LeaseOutcome, LeaseRequest, LeaseStatus


@dataclass
class Sweep:
    """What one lease sweep did."""

    expired: list[Lease] = field(default_factory=list)
    timed_out: list[Lease] = field(default_factory=list)
    granted: list[Lease] = field(default_factory=list)


@dataclass(frozen=True)
class Renewal:
    """One lease to renew: by its ttl, while the job's claim `claim_token` holds (None:
    not a job's lease), with the VRAM its holder uses now (None: not reported)."""

    token: str
    ttl_s: float
    claim_token: str | None = None
    used_vram_mb: int | None = None


class GpuStore(Protocol):
    """GPU inventory and leases. Every write that changes who holds what is serialised."""

    def report_node(
        self, node: str, reading: NodeReading, now: datetime, temp_limit_c: float
    ) -> None:
        """Store a node's probe reading: the node, and its devices as they are now."""
        ...

    def list_devices(self) -> list[Device]: ...

    def list_nodes(self) -> list[Node]: ...

    def get_policy(self) -> tuple[AdmissionPolicy, int]:
        """The admission policy and its version (0: never changed)."""
        ...

    def put_policy(
        self, policy: AdmissionPolicy, now: datetime, actor: str, expected_version: int | None
    ) -> int:
        """Replace the policy (only from `expected_version` when given); the new version."""
        ...

    def request_lease(self, request: LeaseRequest, now: datetime, limits: Limits) -> LeaseOutcome:
        """Grant now, queue (wait_s > 0) or deny."""
        ...

    def finish_wait(self, token: str, now: datetime, limits: Limits) -> LeaseOutcome:
        """A waiting request's deadline passed: granted at the last moment, or timed out."""
        ...

    def cancel_wait(self, token: str, now: datetime, limits: Limits) -> Lease | None:
        """The waiter gave up: `timed_out`, or released if granted meanwhile."""
        ...

    def get_lease(self, token: str) -> Lease | None: ...

    def get_leases(self, tokens: Sequence[str]) -> list[Lease]:
        """The leases of these tokens that exist, in no order."""
        ...

    def list_leases(
        self,
        statuses: Sequence[LeaseStatus] = ...,
        limit: int | None = None,
        owner: str | None = None,
    ) -> list[Lease]:
        """Leases of these statuses (default: active), oldest first, at most `limit`; with
        `owner`, only that owner's."""
        ...

    def renew_lease(self, token: str, now: datetime, used_vram_mb: int | None = None) -> Lease:
        """Extend an active lease; raises LeaseNotFound, LeaseExpired or LeaseReleased."""
        ...

    def renew_leases(self, renewals: Sequence[Renewal], now: datetime) -> set[str]:
        """Extend a worker's job leases (each while its job's claim holds); returns the
        tokens not renewed."""
        ...

    def release_lease(
        self,
        token: str,
        now: datetime,
        limits: Limits,
        *,
        peak_vram_mb: int | None = None,
        success: bool | None = None,
    ) -> Lease:
        """Give the devices back (idempotent) and grant waiting requests that now fit."""
        ...

    def sweep_leases(self, now: datetime, limits: Limits) -> Sweep:
        """Expire leases past their ttl, time out abandoned waits, grant in policy order."""
        ...
