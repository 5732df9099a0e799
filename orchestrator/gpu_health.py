"""GPU health: which handler failures are GPU faults, and when a device is quarantined.

A device collects faults: NVML errors its node's reporter saw on it, Xid-style faults a
handler reported (`JobContext.report_gpu_fault`), and out-of-memory failures with evidence
against the device (see `workers.gpu_health`). Job faults count once per job: one job
failing again and again is the job's problem, not the card's. Enough of one kind within a
window (settings
`gpu_quarantine_faults`, `gpu_quarantine_ooms`, `gpu_quarantine_window_s`) quarantines it:
admission gives it no new leases, across restarts, until an admin clears it
(`POST /gpu/{node}/{index}/clear`). Leases already on it run to their end.

An out-of-memory failure also makes the job's next attempt ask for more VRAM
(`gpu_oom_growth`, bounded) and, where the node has another device, avoid the one it failed on.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from orchestrator.settings import Settings


class FaultKind(StrEnum):
    NVML = "nvml"  # the node's probe could not read the device
    XID = "xid"  # a handler reported a device fault (an Xid, an ECC error, a hung context)
    OOM = "oom"  # out of memory, with evidence against the device (workers/gpu_health.py)


# What CUDA, PyTorch, cuBLAS/cuDNN and our own `GpuOutOfMemory` say when memory runs out.
# Matched on the failure's text (exception type and message), which is all the worker has
# when a handler runs its CUDA code in a child process.
OOM_PATTERN = re.compile(
    r"OutOfMemoryError|GpuOutOfMemory|CUDA out of memory|CUDA_ERROR_OUT_OF_MEMORY"
    r"|CUDA error: out of memory|CUBLAS_STATUS_ALLOC_FAILED|CUDNN_STATUS_ALLOC_FAILED"
    r"|cudaErrorMemoryAllocation",
    re.IGNORECASE,
)
# A handler's own `GpuFault`, and the driver's words for a device that failed under it.
# Not "an illegal memory access": that is nearly always a bug in the job's own kernel, and
# one buggy job type would otherwise quarantine healthy cards.
FAULT_PATTERN = re.compile(
    r"GpuFault|\bXid\b|CUDA_ERROR_ECC_UNCORRECTABLE|uncorrectable ECC error"
    r"|GPU is lost|fallen off the bus",
    re.IGNORECASE,
)


def classify_failure(error: str) -> FaultKind | None:
    """`OOM` or `XID` when a handler's failure (as `_describe` wrote it) was the GPU's."""
    if OOM_PATTERN.search(error):
        return FaultKind.OOM
    if FAULT_PATTERN.search(error):
        return FaultKind.XID
    return None


@dataclass(frozen=True)
class FaultRules:
    """How many faults of a kind, within `window_s`, quarantine a device (0: never)."""

    faults: int
    ooms: int
    window_s: float

    @classmethod
    def of(cls, settings: Settings) -> FaultRules:
        return cls(
            settings.gpu_quarantine_faults,
            settings.gpu_quarantine_ooms,
            settings.gpu_quarantine_window_s,
        )

    def threshold(self, kind: FaultKind) -> int:
        return self.ooms if kind is FaultKind.OOM else self.faults


@dataclass(frozen=True)
class GpuFault:
    """One fault on one device."""

    node: str
    index: int
    kind: FaultKind
    detail: str
    job_id: str | None = None


@dataclass(frozen=True)
class Quarantine:
    """A device's quarantine: since when and why; `cleared_at` set once an admin cleared it."""

    node: str
    index: int
    reason: str
    since: datetime
    cleared_at: datetime | None = None
    cleared_by: str | None = None

    @property
    def active(self) -> bool:
        return self.cleared_at is None


def grown_estimate(est_vram_mb: int, growth: float, ceiling_mb: int) -> int:
    """The next attempt's estimate after an OOM: `growth` times more, at most `ceiling_mb`
    (never less than it was)."""
    grown = math.ceil(est_vram_mb * growth)
    return max(est_vram_mb, min(grown, ceiling_mb))
