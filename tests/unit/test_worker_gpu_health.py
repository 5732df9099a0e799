"""`GpuHealth.after_attempt` never raises: whatever fails while recording an attempt's GPU
faults, the worker still releases the lease and records the outcome after it."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import sqlalchemy.exc

from orchestrator.clock import FakeClock
from orchestrator.jobs import Priority
from orchestrator.leases import Lease, LeaseStatus
from orchestrator.settings import Settings
from orchestrator.store import SqlStore
from workers.context import JobContext
from workers.gpu_health import GpuHealth

from .store_helpers import Submitter, claim


class BrokenStore:
    """A store whose GPU fault writes and device reads fail with `error`."""

    def __init__(self, store: SqlStore, error: BaseException) -> None:
        self._store = store
        self.error = error

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def record_gpu_fault(self, *args: Any) -> None:
        raise self.error

    def list_devices(self) -> None:
        raise self.error


def _lease(clock: FakeClock, devices: Any = (0,)) -> Lease:
    return Lease(
        token="t" * 32,
        agent="worker",
        status=LeaseStatus.ACTIVE,
        est_vram_mb=8000,
        gpu_count=1,
        priority=Priority.NORMAL,
        ttl_s=60.0,
        queued_at=clock.now(),
        created_at=clock.now(),
        node="n1",
        devices=devices,
    )


def _ctx(job_id: str) -> JobContext:
    return JobContext(
        job_id=job_id,
        job_type="inference_jobs",
        payload={},
        attempt=1,
        max_attempts=3,
        timeout_s=60.0,
        report_progress=lambda _: None,
    )


@pytest.mark.parametrize(
    ("error", "status", "value"),
    [
        (RuntimeError("driver bug"), "ok", None),  # a reported Xid, recorded
        (sqlalchemy.exc.DataError("INSERT", {}, Exception("too long")), "ok", None),
        (RuntimeError("driver bug"), "error", "RuntimeError: CUDA error: out of memory"),
    ],
)
def test_after_attempt__an_unexpected_store_error_is_logged_not_raised(
    store: SqlStore,
    clock: FakeClock,
    submit: Submitter,
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
    error: BaseException,
    status: str,
    value: object,
) -> None:
    claimed = claim(store, clock, submit())
    ctx = _ctx(claimed.job.id)
    ctx.report_gpu_fault("Xid 79: GPU has fallen off the bus")
    health = GpuHealth(BrokenStore(store, error), settings, clock)  # type: ignore[arg-type]
    with caplog.at_level(logging.ERROR, logger="workers.gpu_health"):
        health.after_attempt(claimed, _lease(clock), ctx, status, value)
    [record] = [r for r in caplog.records if getattr(r, "event", None) == "gpu_fault_unrecorded"]
    assert record.exc_info is not None and record.exc_info[1] is error


def test_after_attempt__an_error_building_the_faults_is_caught_too(
    store: SqlStore, clock: FakeClock, submit: Submitter, settings: Settings
) -> None:
    claimed = claim(store, clock, submit())
    ctx = _ctx(claimed.job.id)
    ctx.report_gpu_fault("Xid 79")  # every device of a lease that names none it can iterate
    GpuHealth(store, settings, clock).after_attempt(claimed, _lease(clock, None), ctx, "ok", None)
