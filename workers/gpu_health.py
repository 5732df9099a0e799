"""After a GPU job's attempt: record the device faults it met, and make an out-of-memory
failure's retry ask for more VRAM, elsewhere (see `orchestrator.gpu_health`).

Called by the worker after the handler returned and before the outcome is recorded, so
the next attempt (published once `fail_job` commits) already carries the new estimate.
"""

from __future__ import annotations

import dataclasses
import logging

from orchestrator.clock import Clock
from orchestrator.gpu import Device
from orchestrator.gpu_health import (
    FaultKind,
    FaultRules,
    GpuFault,
    classify_failure,
    grown_estimate,
)
from orchestrator.jobs import Claim
from orchestrator.leases import Lease
from orchestrator.settings import Settings
from orchestrator.store import Store
from workers.context import JobContext

logger = logging.getLogger(__name__)


class GpuHealth:
    def __init__(self, store: Store, settings: Settings, clock: Clock) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock

    def after_attempt(
        self, claim: Claim, lease: Lease, ctx: JobContext, status: str, error: object
    ) -> None:
        """Record what the attempt saw of its devices. Never raises: a fault not recorded
        only delays a quarantine."""
        try:
            self._after_attempt(claim, lease, ctx, status, error)
        except Exception:
            # Any error (a store's, a driver's, a bug): the lease must still be released and
            # the outcome recorded after this.
            logger.exception(
                "job %s: could not record its GPU faults",
                claim.job.id,
                extra={"event": "gpu_fault_unrecorded", "job_id": claim.job.id},
            )

    def _after_attempt(
        self, claim: Claim, lease: Lease, ctx: JobContext, status: str, error: object
    ) -> None:
        faults = [
            GpuFault(lease.node or "", index, FaultKind.XID, detail, claim.job.id)
            for device, detail in ctx.gpu_faults
            for index in (lease.devices if device is None else (device,))
        ]
        text = error if status == "error" and isinstance(error, str) else ""
        kind = classify_failure(text) if text else None
        if kind is FaultKind.XID:
            node = lease.node or ""
            faults += [
                GpuFault(node, i, FaultKind.XID, text[:500], claim.job.id) for i in lease.devices
            ]
        elif kind is FaultKind.OOM:
            devices = {d.key: d for d in self.store.list_devices()}
            faults += self._oom_faults(claim, lease, ctx, text, devices)
            largest = max((d.memory_total_mb for d in devices.values()), default=0)
            self._grow(claim, lease, text, largest)
        self._record(faults)

    def _oom_faults(
        self,
        claim: Claim,
        lease: Lease,
        ctx: JobContext,
        error: str,
        devices: dict[tuple[str, int], Device],
    ) -> list[GpuFault]:
        """An OOM counts against a device only with evidence against the device, not the
        job's estimate: the job asked for less than the device holds, and either its own
        measured peak (`ctx.report_vram`) stayed below what it reserved, or the device's
        measured used memory is beyond what its active leases reserve (something outside
        any lease, a leak or a faulty card, took the memory). Without evidence the estimate
        was simply too small: the retry's larger estimate is the answer, not a quarantine."""
        headroom = self.settings.gpu_headroom_mb
        node = lease.node or ""
        below_estimate = ctx.peak_vram_mb is not None and ctx.peak_vram_mb < lease.est_vram_mb
        reserved: dict[int, int] = {}
        if not below_estimate:
            for other in self.store.list_leases():
                if other.node == node and other.token != lease.token:
                    for i in other.devices:
                        reserved[i] = reserved.get(i, 0) + other.est_vram_mb
        faults = []
        for i in lease.devices:
            device = devices.get((node, i))
            if device is None or lease.est_vram_mb >= device.memory_total_mb - headroom:
                continue
            accounted = reserved.get(i, 0) + lease.est_vram_mb + headroom
            if below_estimate or device.memory_used_mb > accounted:
                faults.append(GpuFault(node, i, FaultKind.OOM, error[:500], claim.job.id))
        return faults

    def _grow(self, claim: Claim, lease: Lease, error: str, largest: int) -> None:
        gpu = claim.job.gpu
        if gpu is None or claim.attempt >= claim.job.max_attempts:
            return  # no attempt left to give more memory to
        ceiling = largest - self.settings.gpu_headroom_mb
        if self.settings.gpu_oom_max_vram_mb:
            ceiling = min(ceiling, self.settings.gpu_oom_max_vram_mb)
        grown = grown_estimate(gpu.est_vram_mb, self.settings.gpu_oom_growth, ceiling)
        avoid = tuple(dict.fromkeys((*gpu.avoid, *((lease.node or "", i) for i in lease.devices))))
        needs = dataclasses.replace(gpu, est_vram_mb=grown, avoid=avoid)
        detail = {
            "from_mb": gpu.est_vram_mb,
            "to_mb": grown,
            "avoid": [list(k) for k in avoid],
            "error": error[:500],
        }
        if self.store.raise_gpu_estimate(claim, needs, self.clock.now(), detail):
            logger.warning(
                "job %s ran out of GPU memory with %d MB on %s/%s; next attempt asks %d MB",
                claim.job.id,
                gpu.est_vram_mb,
                lease.node,
                ",".join(map(str, lease.devices)),
                grown,
                extra={"event": "vram_estimate_raised", "job_id": claim.job.id},
            )

    def _record(self, faults: list[GpuFault]) -> None:
        rules = FaultRules.of(self.settings)
        for fault in faults:
            quarantine = self.store.record_gpu_fault(fault, self.clock.now(), rules)
            if quarantine is not None:
                logger.error(
                    "GPU %s/%d quarantined: %s",
                    fault.node,
                    fault.index,
                    quarantine.reason,
                    extra={"event": "gpu_quarantined", "job_id": fault.job_id},
                )
