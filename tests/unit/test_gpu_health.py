"""GPU health as pure functions: which failures are the GPU's, how far an OOM raises the
estimate, and how admission treats quarantined devices and an OOM retry's `avoid`."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

import pytest

from orchestrator.admission import Book, Limits, Placement, serve_queue
from orchestrator.gpu import HEALTH_DEGRADED, HEALTH_OK, Device
from orchestrator.gpu_health import FaultKind, classify_failure, grown_estimate
from orchestrator.jobs import GpuNeeds, Priority
from orchestrator.leases import (
    AdmissionPolicy,
    Denial,
    DenyReason,
    Lease,
    LeaseRequest,
    LeaseStatus,
)

NOW = datetime(2026, 1, 1, 12, 0, 0)
LIMITS = Limits(headroom_mb=512, stale_s=30.0)


def device(index: int, node: str = "n1", **changes: object) -> Device:
    d = Device(
        node=node,
        index=index,
        name="Test GPU",
        memory_total_mb=24576,
        memory_used_mb=0,
        source="simulated",
        health=HEALTH_OK,
        reported_at=NOW - timedelta(seconds=1),
    )
    return replace(d, **changes)  # type: ignore[arg-type]


def place(devices: list[Device], request: LeaseRequest) -> Placement | Denial:
    return Book(devices, (), AdmissionPolicy(), LIMITS, NOW).place(request)


@pytest.mark.parametrize(
    "error",
    [
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
        "torch.cuda.OutOfMemoryError: CUDA out of memory.",
        "RuntimeError: CUDA error: out of memory",
        "RuntimeError: CUDA_ERROR_OUT_OF_MEMORY",
        "RuntimeError: CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate",
        "workers.context.GpuOutOfMemory: ran out",
    ],
)
def test_classify_failure__out_of_memory(error: str) -> None:
    assert classify_failure(error) is FaultKind.OOM


@pytest.mark.parametrize(
    "error",
    [
        "workers.context.GpuFault: Xid 79",
        "RuntimeError: CUDA error: uncorrectable ECC error encountered",
    ],
)
def test_classify_failure__device_fault(error: str) -> None:
    assert classify_failure(error) is FaultKind.XID


@pytest.mark.parametrize(
    "error",
    [
        "ValueError: bad input",
        "MemoryError",
        "KeyError: 'oom'",
        "timed out after 5s",
        # Nearly always the job's own kernel: not evidence against the card.
        "RuntimeError: CUDA error: an illegal memory access was encountered",
    ],
)
def test_classify_failure__other_failures_are_not_the_gpu(error: str) -> None:
    assert classify_failure(error) is None


def test_grown_estimate__grows_and_stops_at_the_ceiling() -> None:
    assert grown_estimate(8000, 1.5, 24064) == 12000
    assert grown_estimate(20000, 1.5, 24064) == 24064
    assert grown_estimate(24064, 1.5, 24064) == 24064
    assert grown_estimate(30000, 1.5, 24064) == 30000  # never shrinks
    assert grown_estimate(1001, 1.5, 99999) == 1502  # rounds up


def test_gpu_needs__avoid_round_trips_and_is_absent_when_empty() -> None:
    needs = GpuNeeds(12000, 1, "m", (("n1", 0),))
    assert GpuNeeds.from_dict(needs.as_dict()) == needs
    assert "avoid" not in GpuNeeds(8000).as_dict()


def test_place__avoid_prefers_another_device_that_fits() -> None:
    request = LeaseRequest(agent="a", est_vram_mb=8000, avoid=(("n1", 0),))
    assert place([device(0), device(1)], request) == Placement("n1", (1,))
    # Without avoid, best fit takes the first.
    assert place([device(0), device(1)], replace(request, avoid=())) == Placement("n1", (0,))


def test_place__avoid_is_only_a_preference() -> None:
    request = LeaseRequest(agent="a", est_vram_mb=8000, avoid=(("n1", 0),))
    busy = device(1, memory_used_mb=20000)
    assert place([device(0), busy], request) == Placement("n1", (0,))


def test_place__a_quarantined_device_gets_no_lease() -> None:
    sick = device(0, quarantined_since=NOW, quarantine_reason="3 xid faults")
    request = LeaseRequest(agent="a", est_vram_mb=8000)
    assert place([sick, device(1)], request) == Placement("n1", (1,))

    denied = place([sick], request)
    assert isinstance(denied, Denial)
    assert denied.reason is DenyReason.GPU_QUARANTINED
    assert denied.unavailable
    assert "n1/0: quarantined (3 xid faults)" in denied.message


def test_place__degraded_and_quarantined_together_say_degraded() -> None:
    sick = device(0, quarantined_since=NOW, quarantine_reason="faults")
    hot = device(1, health=HEALTH_DEGRADED, error="too hot")
    denied = place([sick, hot], LeaseRequest(agent="a", est_vram_mb=8000))
    assert isinstance(denied, Denial)
    assert denied.reason is DenyReason.GPU_DEGRADED
    assert "too hot" in denied.message


def test_place__an_idle_quarantined_card_does_not_turn_a_wait_into_a_503() -> None:
    sick = device(0, quarantined_since=NOW, quarantine_reason="3 xid faults")
    busy = device(1, memory_used_mb=20000)  # healthy, could hold it once free
    denied = place([sick, busy], LeaseRequest(agent="a", est_vram_mb=8000))
    assert isinstance(denied, Denial)
    assert denied.reason is DenyReason.INSUFFICIENT_VRAM
    assert not denied.unavailable and not denied.final
    # Larger than the healthy card could ever hold, but the quarantined one could: 503.
    small = device(1, memory_total_mb=8192)
    only = place([sick, small], LeaseRequest(agent="a", est_vram_mb=16000))
    assert isinstance(only, Denial) and only.reason is DenyReason.GPU_QUARANTINED


def test_serve_queue__a_request_only_a_quarantined_card_could_hold_blocks_nothing() -> None:
    sick = device(0, quarantined_since=NOW, quarantine_reason="3 xid faults")
    small = device(1, memory_total_mb=8192)
    book = Book([sick, small], (), AdmissionPolicy(), LIMITS, NOW)
    big = _waiting("big", 16000, waited_s=10)
    little = _waiting("little", 4000)
    result = serve_queue(book, [big, little], AdmissionPolicy())
    assert result.denied["big"].reason is DenyReason.GPU_QUARANTINED
    assert result.granted["little"] == Placement("n1", (1,))


def _waiting(token: str, est: int, waited_s: float = 0.0) -> Lease:
    queued = NOW - timedelta(seconds=waited_s)
    return Lease(
        token=token,
        agent="waiter",
        status=LeaseStatus.WAITING,
        est_vram_mb=est,
        gpu_count=1,
        priority=Priority.NORMAL,
        ttl_s=60.0,
        queued_at=queued,
        created_at=queued,
        wait_until=NOW + timedelta(seconds=30),
    )
