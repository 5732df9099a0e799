"""Jobs that need a GPU: a worker takes a lease on its node before the handler runs, the
handler sees its devices, the lease is heartbeated with the job and released after."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from orchestrator.gpu import SimulatedProbe
from orchestrator.store.tables import leases
from tests.integration.harness import System, wait_until
from workers import builtin
from workers.context import JobContext
from workers.models import ModelAffinity
from workers.registry import HandlerRegistry

NODE = "gpu-node-1"


class GpuHandlers:
    """Handlers that record what each run saw of its GPUs, and how many ran at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: dict[str, dict[str, Any]] = {}
        self.running = 0
        self.most_at_once = 0

    def use_gpu(self, ctx: JobContext) -> Any:
        with self.lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
            assert ctx.gpu is not None
            self.seen[ctx.id] = {"devices": ctx.gpu.devices, "env": ctx.gpu.env()}
        try:
            seconds = float((ctx.payload or {}).get("seconds", 0.05))
            ctx.report_vram(int((ctx.payload or {}).get("vram", 1000)))
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                ctx.check_cancelled()
                time.sleep(0.02)
            return {"devices": list(ctx.gpu.devices)}
        finally:
            with self.lock:
                self.running -= 1

    def registry(self) -> HandlerRegistry:
        registry = HandlerRegistry()
        registry.add_module(builtin)
        registry.register("use_gpu", self.use_gpu)
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
    )
    system = System(backend)
    try:
        yield system
    finally:
        system.close()


def report(system: System, sizes: list[int], node: str = NODE) -> None:
    system.store.report_node(node, SimulatedProbe(sizes).read(), system.services.clock.now(), 90)


def lease_rows(system: System, job_id: str) -> list[Any]:
    with system.store.engine.connect() as conn:
        return list(conn.execute(sa.select(leases).where(leases.c.job_id == job_id)))


def test_gpu_job__runs_on_a_leased_device_and_releases_it(gpu_system: System) -> None:
    report(gpu_system, [24576, 24576])
    handlers = GpuHandlers()
    gpu_system.start_worker(registry=handlers.registry())

    job_id = gpu_system.submit(
        type="use_gpu", payload={"vram": 7000}, gpu={"est_vram_mb": 8000, "gpu_count": 2}
    )
    job = gpu_system.wait_status(job_id)

    assert job["status"] == "done"
    assert job["gpu"] == {"est_vram_mb": 8000, "gpu_count": 2, "model_id": None}
    assert sorted(job["result"]["devices"]) == [0, 1]
    assert handlers.seen[job_id]["env"]["CUDA_VISIBLE_DEVICES"] == "0,1"
    (row,) = lease_rows(gpu_system, job_id)
    assert row.status == "released"
    assert row.node == NODE
    assert row.peak_vram_mb == 7000
    assert row.success is True
    assert gpu_system.events(job_id)[:3] == ["submitted", "claimed", "started"]
    assert gpu_system.client.get("/leases").json()["leases"] == []


def test_gpu_jobs__never_share_a_card_past_its_memory(gpu_system: System) -> None:
    report(gpu_system, [24576])
    handlers = GpuHandlers()
    gpu_system.start_worker(registry=handlers.registry(), concurrency=3)

    ids = [
        gpu_system.submit(type="use_gpu", payload={"seconds": 0.3}, gpu={"est_vram_mb": 15000})
        for _ in range(3)
    ]
    for job_id in ids:
        assert gpu_system.wait_status(job_id, timeout=30)["status"] == "done"

    # Each needs 15 GB of a 24 GB card: they ran one at a time, none lost, none failed.
    assert handlers.most_at_once == 1
    assert all(gpu_system.job(j)["attempts"] == 1 for j in ids)
    waited = [j for j in ids if "released" in gpu_system.events(j)]
    assert waited, "some job should have waited for the card outside its slot"


def test_gpu_job__that_can_never_fit_fails_with_the_reason(gpu_system: System) -> None:
    report(gpu_system, [24576])
    gpu_system.start_worker(registry=GpuHandlers().registry())

    job_id = gpu_system.submit(type="use_gpu", max_attempts=2, gpu={"est_vram_mb": 80000})
    job = gpu_system.wait_status(job_id)

    assert job["status"] == "dead_letter"
    assert "cannot get a GPU lease" in job["error"]
    assert job["attempts"] == 2


def test_gpu_job__on_a_node_without_gpus_waits_and_is_not_lost(gpu_system: System) -> None:
    handlers = GpuHandlers()
    gpu_system.start_worker(registry=handlers.registry())

    job_id = gpu_system.submit(type="use_gpu", gpu={"est_vram_mb": 1000})
    wait_until(lambda: "released" in gpu_system.events(job_id), 10, "the job to be given back")
    job = gpu_system.job(job_id)
    assert job["status"] in ("pending", "claimed")
    assert job["attempts"] <= 1
    assert job_id not in handlers.seen

    report(gpu_system, [24576])  # the node's GPUs come up
    assert gpu_system.wait_status(job_id, timeout=20)["status"] == "done"
    assert gpu_system.job(job_id)["attempts"] == 1


def test_gpu_job__lease_heartbeated_past_its_ttl(gpu_system: System) -> None:
    report(gpu_system, [24576])
    gpu_system.start_worker(registry=GpuHandlers().registry())

    # The lease's ttl is the visibility timeout (1 s): the job runs 2.5 s.
    job_id = gpu_system.submit(type="use_gpu", payload={"seconds": 2.5}, gpu={"est_vram_mb": 1000})
    assert gpu_system.wait_status(job_id, timeout=20)["status"] == "done"

    (row,) = lease_rows(gpu_system, job_id)
    assert row.status == "released"
    assert gpu_system.job(job_id)["attempts"] == 1


def test_gpu_job__lease_lost_mid_run_fails_the_attempt_and_retries(gpu_system: System) -> None:
    report(gpu_system, [24576])
    handlers = GpuHandlers()
    gpu_system.start_worker(registry=handlers.registry())

    job_id = gpu_system.submit(type="use_gpu", payload={"seconds": 1.5}, gpu={"est_vram_mb": 1000})
    wait_until(lambda: job_id in handlers.seen, 10, "the handler to start")
    with gpu_system.store.engine.begin() as conn:  # as the sweep does to a silent lease
        conn.execute(
            leases.update()
            .where(leases.c.job_id == job_id, leases.c.status == "active")
            .values(status="expired")
        )

    job = gpu_system.wait_status(job_id, timeout=20)
    assert job["status"] == "done"
    assert job["attempts"] == 2
    events = gpu_system.client.get(f"/jobs/{job_id}/events").json()["events"]
    retried = [e for e in events if e["event"] == "retry_scheduled"]
    assert "GPU lease expired" in retried[0]["detail"]["error"]


def test_gpu_job__for_a_warm_model_runs_where_the_model_is_warm(gpu_system: System) -> None:
    settings_b = gpu_system.settings.model_copy(update={"node_name": "gpu-node-2"})
    report(gpu_system, [24576])
    report(gpu_system, [24576], node="gpu-node-2")
    handlers = GpuHandlers()
    nodes: list[str] = []

    def where(ctx: JobContext) -> Any:
        assert ctx.gpu is not None
        with handlers.lock:
            nodes.append(ctx.gpu.node)
        return handlers.use_gpu(ctx)

    def registry() -> HandlerRegistry:
        r = handlers.registry()
        r.register("use_gpu", where)
        return r

    worker_a = gpu_system.start_worker(registry=registry())
    store_b = gpu_system.backend.store()
    gpu_system.start_worker(
        registry=registry(),
        settings=settings_b,
        affinity=ModelAffinity(store_b, settings_b),
    )
    gpu_system.store.record_warm(
        NODE, "llama-8b", worker_a.id, None, gpu_system.services.clock.now()
    )
    wait_until(
        lambda: len(gpu_system.client.get("/workers").json()["workers"]) == 2, 10, "2 workers"
    )

    ids = [
        gpu_system.submit(
            type="use_gpu",
            payload={"seconds": 0.05},
            gpu={"est_vram_mb": 1000, "model_id": "llama-8b"},
        )
        for _ in range(6)
    ]
    for job_id in ids:
        assert gpu_system.wait_status(job_id, timeout=20)["status"] == "done"
    store_b.close()

    assert nodes == [NODE] * 6  # node 2 left every job to the node where the model is warm
