"""GPU-aware failure handling end to end, on both backends: an out-of-memory failure is
retried with a larger estimate on the other card; a device that keeps failing is
quarantined (no leases, across restarts) until an admin clears it."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.clock import SystemClock
from orchestrator.gpu import SimulatedProbe, build_probe
from orchestrator.leases import LeaseRequest, LeaseStatus
from orchestrator.store.tables import gpu_faults, leases
from orchestrator.telemetry import GpuReporter
from orchestrator.testing import FakeGpu, FakeNvml
from tests.integration.harness import System
from workers import builtin
from workers.context import GpuOutOfMemory, JobContext
from workers.registry import HandlerRegistry

NODE = "gpu-node-1"
CARD = 24576


class OomOnce:
    """Runs out of memory on its first attempt, then succeeds; records the devices seen."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.devices: list[tuple[int, ...]] = []
        self.estimates: list[int] = []

    def run(self, ctx: JobContext) -> Any:
        assert ctx.gpu is not None
        with self.lock:
            self.devices.append(ctx.gpu.devices)
            self.estimates.append(ctx.gpu.est_vram_mb)
        if ctx.attempt == 1:
            raise GpuOutOfMemory("CUDA out of memory. Tried to allocate 2.00 GiB")
        return {"devices": list(ctx.gpu.devices)}

    @staticmethod
    def faulty(ctx: JobContext) -> Any:
        ctx.report_gpu_fault("Xid 79: GPU has fallen off the bus")
        return "ok"

    def registry(self) -> HandlerRegistry:
        registry = HandlerRegistry()
        registry.add_module(builtin)
        registry.register("oom_once", self.run)
        registry.register("faulty", self.faulty)
        return registry


@pytest.fixture
def gpu_system(backend_factory: Callable[..., Any]) -> Iterator[System]:
    backend = backend_factory(
        node_name=NODE,
        visibility_timeout_s=1.0,
        heartbeat_interval_s=0.2,
        job_lease_wait_s=0.3,
        job_lease_retry_s=0.1,
        lease_sweep_interval_s=0.05,
        retry_backoff_base_s=0.05,
        retry_backoff_max_s=0.1,
        gpu_quarantine_faults=2,
    )
    system = System(backend)
    try:
        yield system
    finally:
        system.close()


def report(system: System, sizes: list[int]) -> None:
    system.store.report_node(NODE, SimulatedProbe(sizes).read(), system.services.clock.now(), 90)


def lease(system: System, **body: Any) -> Any:
    return system.client.post("/leases", json={"agent": "a", "est_vram_mb": 1000, **body})


def quarantined_metric(system: System) -> float:
    text = system.client.get("/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "gpu_orchestrator_gpu_quarantined":
                assert sample.labels == {"node": NODE, "gpu": "0"}
                return float(sample.value)
    raise AssertionError("no gpu_orchestrator_gpu_quarantined sample")


def test_oom__retried_with_a_larger_estimate_on_the_other_card(gpu_system: System) -> None:
    report(gpu_system, [CARD, CARD])
    handlers = OomOnce()
    gpu_system.start_worker(registry=handlers.registry())

    job_id = gpu_system.submit(type="oom_once", gpu={"est_vram_mb": 8000}, max_attempts=3)
    job = gpu_system.wait_status(job_id, "done", "dead_letter", timeout=30)

    assert job["status"] == "done"
    assert job["attempts"] == 2
    first, second = handlers.devices
    assert first != second  # the other card
    assert handlers.estimates == [8000, 12000]  # x1.5 (ORCH_GPU_OOM_GROWTH)
    assert job["gpu"]["est_vram_mb"] == 12000
    assert job["gpu"]["avoid"] == [[NODE, first[0]]]
    events = gpu_system.client.get(f"/jobs/{job_id}/events").json()["events"]
    raised = [e for e in events if e["event"] == "vram_estimate_raised"]
    assert len(raised) == 1
    assert raised[0]["detail"]["from_mb"] == 8000
    assert raised[0]["detail"]["to_mb"] == 12000
    with gpu_system.store.engine.connect() as conn:
        rows = conn.execute(
            sa.select(leases.c.est_vram_mb, leases.c.devices)
            .where(leases.c.job_id == job_id)
            .order_by(leases.c.created_at)
        ).all()
    assert [r.est_vram_mb for r in rows] == [8000, 12000]
    # Nothing says the card was at fault (no peak below the estimate, nothing used beyond
    # the leases): the estimate was too small, and the card collects no fault.
    with gpu_system.store.engine.connect() as conn:
        assert conn.execute(sa.select(gpu_faults.c.id)).all() == []


def test_oom__counts_against_the_card_with_evidence_once_per_job(gpu_system: System) -> None:
    report(gpu_system, [CARD])

    def oom_below_estimate(ctx: JobContext) -> Any:
        ctx.report_vram(2000)  # it had reserved 8000 MB and used 2000 when memory ran out
        raise GpuOutOfMemory("CUDA out of memory. Tried to allocate 2.00 GiB")

    registry = OomOnce().registry()
    registry.register("oom_below", oom_below_estimate)
    gpu_system.start_worker(registry=registry)

    job_id = gpu_system.submit(type="oom_below", gpu={"est_vram_mb": 8000}, max_attempts=3)
    assert gpu_system.wait_status(job_id, "dead_letter", timeout=30)["status"] == "dead_letter"

    with gpu_system.store.engine.connect() as conn:
        faults = conn.execute(sa.select(gpu_faults.c.idx, gpu_faults.c.kind, gpu_faults.c.job_id))
        rows = faults.all()
    assert rows and all(r == (0, "oom", job_id) for r in rows)
    # One job out of memory three times (ORCH_GPU_QUARANTINE_OOMS=3) is one job's trouble.
    assert gpu_system.store.list_quarantines() == []


def test_oom__estimate_is_bounded_by_the_largest_card(gpu_system: System) -> None:
    report(gpu_system, [CARD, CARD])
    handlers = OomOnce()
    gpu_system.start_worker(registry=handlers.registry())

    job_id = gpu_system.submit(type="oom_once", gpu={"est_vram_mb": 20000}, max_attempts=2)
    job = gpu_system.wait_status(job_id, "done", "dead_letter", timeout=30)

    headroom = gpu_system.settings.gpu_headroom_mb
    assert job["status"] == "done"
    assert handlers.estimates == [20000, CARD - headroom]


def test_quarantine__repeated_faults_stop_leases_until_cleared(gpu_system: System) -> None:
    report(gpu_system, [CARD])
    handlers = OomOnce()
    worker = gpu_system.start_worker(registry=handlers.registry())
    assert lease(gpu_system).status_code == 201  # healthy: leases are granted

    for _ in range(2):  # ORCH_GPU_QUARANTINE_FAULTS=2
        job_id = gpu_system.submit(type="faulty", gpu={"est_vram_mb": 1000})
        assert gpu_system.wait_status(job_id, timeout=30)["status"] == "done"
    gpu_system.stop_worker(worker)

    denied = lease(gpu_system)
    assert denied.status_code == 503, denied.text
    assert denied.json()["reason"] == "gpu_quarantined"
    (gpu,) = gpu_system.client.get("/gpu/info").json()["gpus"]
    assert gpu["quarantined"] is True
    assert "xid" in gpu["quarantine_reason"] and "fallen off the bus" in gpu["quarantine_reason"]
    assert gpu["quarantined_since"] is not None
    assert gpu_system.client.get("/gpu/info").json()["available"] is False
    (state,) = gpu_system.client.get("/gpu_state").json()["gpus"]
    assert state["quarantined"] is True and state["leasable_mb"] == 0
    assert quarantined_metric(gpu_system) == 1

    # A restart (a new store over the same database, fresh reports) keeps it quarantined.
    restarted = gpu_system.backend.store()
    try:
        report(gpu_system, [CARD])
        (device,) = restarted.list_devices()
        assert device.quarantined
    finally:
        restarted.close()

    cleared = gpu_system.client.post(f"/gpu/{NODE}/0/clear")
    assert cleared.status_code == 200, cleared.text
    assert cleared.json()["cleared"] is True
    assert lease(gpu_system).status_code == 201
    assert gpu_system.client.get("/gpu/info").json()["gpus"][0]["quarantined"] is False
    assert quarantined_metric(gpu_system) == 0
    again = gpu_system.client.post(f"/gpu/{NODE}/0/clear").json()
    assert again["cleared"] is False  # nothing to clear: nothing changes
    history = gpu_system.client.get("/gpu/quarantines?include_cleared=true").json()
    assert [q["active"] for q in history["quarantines"]] == [False]


def test_quarantine__clear_of_an_unknown_device_is_404(gpu_system: System) -> None:
    report(gpu_system, [CARD])
    assert gpu_system.client.post(f"/gpu/{NODE}/7/clear").status_code == 404
    assert gpu_system.client.post("/gpu/elsewhere/0/clear").status_code == 404
    assert gpu_system.client.post(f"/gpu/{NODE}/-1/clear").status_code in (400, 422)


def test_quarantine__nvml_errors_on_a_device_quarantine_it(gpu_system: System) -> None:
    nvml = FakeNvml([FakeGpu(memory_total_mb=CARD), FakeGpu(memory_total_mb=CARD)])
    nvml.fail("nvmlDeviceGetMemoryInfo", nvml.NVML_ERROR_UNKNOWN, index=1)
    settings = gpu_system.settings.model_copy(update={"gpu_backend": "nvml"})
    reporter = GpuReporter(gpu_system.store, build_probe(settings, nvml), settings, SystemClock())
    for _ in range(2):
        reporter.report_once()

    (q,) = gpu_system.store.list_quarantines()
    assert (q.node, q.index) == (NODE, 1)
    assert "nvml" in q.reason
    # The healthy card still takes leases; the failing one is not used.
    granted = lease(gpu_system, est_vram_mb=1000)
    assert granted.status_code == 201 and granted.json()["devices"] == [0]

    # The card answers NVML again and reports healthy: still no lease until it is cleared.
    nvml.heal()
    reporter.report_once()
    devices = {d.index: d for d in gpu_system.store.list_devices()}
    assert devices[1].health == "ok" and devices[1].quarantined
    big = CARD - gpu_system.settings.gpu_headroom_mb  # fits only an empty card
    assert lease(gpu_system, est_vram_mb=big).json()["reason"] == "insufficient_vram"
    assert gpu_system.client.post(f"/gpu/{NODE}/1/clear").json()["cleared"] is True
    again = lease(gpu_system, est_vram_mb=big)
    assert again.status_code == 201 and again.json()["devices"] == [1]


def test_oom__on_the_last_attempt_the_estimate_stays(gpu_system: System) -> None:
    report(gpu_system, [CARD, CARD])
    handlers = OomOnce()
    gpu_system.start_worker(registry=handlers.registry())

    job_id = gpu_system.submit(type="oom_once", gpu={"est_vram_mb": 8000}, max_attempts=1)
    job = gpu_system.wait_status(job_id, "dead_letter", timeout=30)

    assert job["gpu"] == {"est_vram_mb": 8000, "gpu_count": 1, "model_id": None}
    assert "CUDA out of memory" in job["error"]
    assert "vram_estimate_raised" not in gpu_system.events(job_id)


def test_quarantine__is_written_before_the_failing_cards_lease_is_released(
    gpu_system: System,
) -> None:
    report(gpu_system, [CARD])
    gate = threading.Event()

    def faulty_slow(ctx: JobContext) -> Any:
        ctx.report_gpu_fault("Xid 79: GPU has fallen off the bus")
        assert gate.wait(20)
        return "ok"

    registry = OomOnce().registry()
    registry.register("faulty_slow", faulty_slow)
    gpu_system.start_worker(registry=registry)
    first = gpu_system.submit(type="faulty", gpu={"est_vram_mb": 1000})
    assert gpu_system.wait_status(first, timeout=30)["status"] == "done"  # 1 of 2 faults
    second = gpu_system.submit(type="faulty_slow", gpu={"est_vram_mb": 1000})
    gpu_system.wait_status(second, "running", timeout=30)
    store, limits = gpu_system.store, gpu_system.services.leases.limits
    whole_card = CARD - gpu_system.settings.gpu_headroom_mb
    ask = LeaseRequest(agent="next", est_vram_mb=whole_card, wait_s=30)
    queued = store.request_lease(ask, gpu_system.services.clock.now(), limits).lease
    assert queued is not None and queued.status is LeaseStatus.WAITING

    gate.set()  # its second fault quarantines the card; then its lease is released

    assert gpu_system.wait_status(second, timeout=30)["status"] == "done"
    assert store.list_quarantines() != []
    after = store.get_lease(queued.token)
    assert after is not None and after.status is not LeaseStatus.ACTIVE  # never granted
