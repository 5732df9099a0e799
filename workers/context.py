"""What a handler sees of its job: `JobContext`."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from workers.models import WarmModels


class JobInterrupted(BaseException):
    """Raised inside a handler's thread to stop it. A BaseException, so that a handler's own
    `except Exception` does not swallow it."""


class JobTimeout(JobInterrupted):
    """The handler ran past its job's `timeout_s`."""


class JobCancelled(JobInterrupted):
    """The job was cancelled; a handler may raise this itself after seeing `ctx.cancelled`."""


class JobLeaseLost(JobInterrupted):
    """The job's GPU lease expired (its heartbeats failed): the devices are no longer ours."""


class GpuOutOfMemory(Exception):
    """Raise it when the job's GPU work ran out of memory (as torch's OutOfMemoryError
    does): the job is retried with a larger VRAM estimate, on another device if one fits."""


class GpuFault(Exception):
    """Raise it when the device itself failed (an Xid, an uncorrectable ECC error): the
    fault counts towards quarantining the job's devices, and the attempt fails."""


@dataclass(frozen=True)
class GpuAssignment:
    """The devices a job's lease holds, on this worker's node."""

    node: str
    devices: tuple[int, ...]
    lease_token: str
    est_vram_mb: int

    @property
    def cuda_visible_devices(self) -> str:
        return ",".join(str(i) for i in self.devices)

    def env(self) -> dict[str, str]:
        """Environment for a child process that runs CUDA code on these devices only.
        NVML numbers devices in PCI bus order; CUDA must be told to do the same."""
        return {
            "CUDA_VISIBLE_DEVICES": self.cuda_visible_devices,
            "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        }


class JobContext:
    """One attempt of one job, as its handler sees it."""

    def __init__(
        self,
        *,
        job_id: str,
        job_type: str,
        payload: Any,
        attempt: int,
        max_attempts: int,
        timeout_s: float,
        report_progress: Callable[[Any], None],
        gpu: GpuAssignment | None = None,
        models: WarmModels | None = None,
    ) -> None:
        self.id = job_id
        self.type = job_type
        self.payload = payload
        self.attempt = attempt
        self.max_attempts = max_attempts
        self.timeout_s = timeout_s
        self._report_progress = report_progress
        self.gpu = gpu
        # This worker process's loaded models: `ctx.models.get(model_id)` (None outside a
        # worker that has them, e.g. in a handler's unit test).
        self.models = models
        self.peak_vram_mb: int | None = None
        self.vram_used_mb: int | None = None
        # (device index or None for all the job's devices, what was seen), see report_gpu_fault.
        self.gpu_faults: list[tuple[int | None, str]] = []
        self._cancel = threading.Event()
        self.logger = logging.LoggerAdapter(
            logging.getLogger(f"workers.jobs.{job_type}"),
            {"job_id": job_id, "attempt": attempt},
        )

    @property
    def cancelled(self) -> bool:
        """True once the job was cancelled (or ran out of time): stop soon."""
        return self._cancel.is_set()

    def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`, waking early on cancellation; True if cancelled."""
        return self._cancel.wait(seconds)

    def check_cancelled(self) -> None:
        """Raise `JobCancelled` if the job was cancelled."""
        if self._cancel.is_set():
            raise JobCancelled()

    def progress(self, value: Any) -> None:
        """Record progress (any JSON value, e.g. {"done": 3, "total": 10}); visible in
        GET /jobs/{id}. Also counts as a heartbeat."""
        self._report_progress(value)

    def report_vram(self, used_mb: int) -> None:
        """Tell the orchestrator how much VRAM the job uses now: sent with the next
        heartbeat of its lease (so admission on its devices counts it once, measured), and
        its peak is recorded when the lease is released."""
        self.vram_used_mb = int(used_mb)
        self.peak_vram_mb = max(self.peak_vram_mb or 0, int(used_mb))

    def report_gpu_fault(self, detail: str, device: int | None = None) -> None:
        """Tell the orchestrator a device of this job's lease failed (e.g. an Xid seen in
        the kernel log): recorded when the attempt ends, it counts towards quarantining the
        device (`device`: its NVML index; None: every device of the lease)."""
        self.gpu_faults.append((device, str(detail)[:1000]))

    def _set_cancelled(self) -> None:
        self._cancel.set()
