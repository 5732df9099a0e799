"""The storage boundary for GPU accounting: what each lease used, summed on demand."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Protocol


class UsageGroup(StrEnum):
    """What `/usage` sums by."""

    OWNER = "owner"
    AGENT = "agent"
    TYPE = "type"
    NODE = "node"


@dataclass(frozen=True)
class UsageQuery:
    """Which usage rows to sum (each filter None: all), and by what. A row counts in the
    period it ended in: `since <= ended_at < until`."""

    group_by: UsageGroup = UsageGroup.OWNER
    owner: str | None = None
    agent: str | None = None
    type: str | None = None
    since: datetime | None = None
    until: datetime | None = None


@dataclass(frozen=True)
class UsageTotal:
    """The usage of one group: `key` is its owner, agent, type or node (None: a lease with
    no type, or never placed)."""

    key: str | None
    leases: int
    gpu_seconds: float
    vram_mb_seconds_est: float
    # Only leases whose holder reported a peak; `measured_leases` says how many.
    vram_mb_seconds_peak: float
    measured_leases: int


@dataclass(frozen=True)
class UsageRecord:
    """One finished lease's usage row."""

    lease_token: str
    owner: str
    agent: str
    type: str | None
    job_id: str | None
    attempt: int | None
    node: str | None
    gpu_count: int
    est_vram_mb: int
    peak_vram_mb: int | None
    started_at: datetime
    ended_at: datetime
    ended: str  # released | expired
    gpu_seconds: float
    vram_mb_seconds_est: float
    vram_mb_seconds_peak: float | None


class UsageStore(Protocol):
    """Usage rows are written by the lease transitions themselves (`release_lease`, the
    expiry in `sweep_leases`), never through this interface: it only reads."""

    def usage_totals(self, query: UsageQuery) -> list[UsageTotal]:
        """The matching rows summed per group, largest GPU-seconds first."""
        ...

    def usage_of_job(self, job_id: str) -> list[UsageRecord]:
        """The usage rows of one job's leases, one per attempt that held devices."""
        ...

    def usage_by_owner_type(self) -> list[tuple[str, str | None, float, float, float]]:
        """(owner, type, GPU-seconds, estimated and measured peak VRAM MB-seconds) over all
        time (metrics); `type` is "other" for a lease that is not a job's."""
        ...
