"""GPU and lease metrics read as Prometheus would, on both backends: the API's lease
counters and device gauges, and a worker's counters for its GPU jobs' leases."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from orchestrator.gpu import DeviceReading, NodeReading, SimulatedProbe
from tests.integration.harness import System, wait_until
from tests.integration.metrics_support import api, of, settled, total, value
from workers.context import JobContext
from workers.metrics import WorkerMetrics

NODE = "n1"
CARD = 24576
LEASES: dict[str, Any] = {
    "node_name": NODE,
    "gpu_headroom_mb": 512,
    "lease_sweep_interval_s": 0.05,
    "lease_max_ttl_s": 60.0,
    "lease_max_wait_s": 10.0,
}


@pytest.fixture
def lease_system(backend_factory: Callable[..., Any]) -> Iterator[System]:
    system = System(backend_factory(**LEASES))
    try:
        yield system
    finally:
        system.close()


def report_card(system: System, used_mb: int = 0) -> None:
    device = DeviceReading(
        index=0,
        name="sim",
        memory_total_mb=CARD,
        memory_used_mb=used_mb,
        utilization_gpu_pct=55.0,
        temperature_c=71.0,
    )
    reading = NodeReading(source="simulated", devices=[device], nvml_supported=False)
    system.store.report_node(
        NODE, reading, system.services.clock.now(), system.settings.gpu_temp_limit_c
    )


def lease(system: System, est: int, **body: Any) -> Any:
    return system.client.post(
        "/leases", json={"agent": "agent", "est_vram_mb": est, "ttl_s": 30, **body}
    )


def granted(system: System, est: int, **body: Any) -> str:
    response = lease(system, est, **body)
    assert response.status_code == 201, response.text
    token: str = response.json()["token"]
    return token


def denied(system: System, est: int, reason: str, **body: Any) -> None:
    response = lease(system, est, **body)
    assert response.status_code in (409, 503), response.text
    assert response.json()["reason"] == reason


def test_metrics__leases_granted_denied_by_reason_waited_and_expired(
    lease_system: System,
) -> None:
    system = lease_system
    wait_until(lambda: system.services.engine.leading, 5, "the engine to lead")  # it sweeps
    report_card(system)
    big = granted(system, 20000)
    short = granted(system, 1000, ttl_s=0.3)
    denied(system, 5000, "insufficient_vram")  # 24064 MB leasable, 21000 held
    denied(system, 30000, "exceeds_capacity")
    denied(system, 5000, "wait_timeout", wait_s=0.2)
    a = api(system)
    assert value(a, "leases_granted_total") == 2
    assert value(a, "leases_denied_total", reason="insufficient_vram") == 1
    assert value(a, "leases_denied_total", reason="exceeds_capacity") == 1
    assert value(a, "leases_denied_total", reason="wait_timeout") == 1
    assert total(a, "leases_denied_total") == 3
    assert value(a, "gpu_memory_total_mb", node=NODE, gpu="0") == CARD
    assert value(a, "gpu_utilization_pct", node=NODE, gpu="0") == 55
    assert value(a, "gpu_temperature_c", node=NODE, gpu="0") == 71
    assert value(a, "gpu_healthy", node=NODE, gpu="0") == 1

    wait_until(
        lambda: system.client.get(f"/leases/{short}").json()["status"] == "expired",
        5,
        "the sweep to expire the short lease",
    )
    a = api(system)
    assert value(a, "lease_expired_total") == 1
    assert value(a, "leases_active", node=NODE) == 1
    assert value(a, "gpu_memory_leased_mb", node=NODE, gpu="0") == 20000

    # A request that queues until a release frees room: granted after a wait.
    result: list[Any] = []
    waiter = threading.Thread(target=lambda: result.append(lease(system, 5000, wait_s=5)))
    waiter.start()
    wait_until(lambda: system.client.get("/gpu_state").json()["waiting"], 5, "it to queue")
    assert system.client.post(f"/leases/{big}/release").status_code == 200
    waiter.join(10)
    assert result[0].status_code == 201, result[0].text
    a = api(system)
    assert value(a, "leases_granted_total") == 3
    assert value(a, "lease_wait_seconds_count") == 3
    assert value(a, "lease_wait_seconds_bucket", le="+Inf") == 3
    assert (value(a, "lease_wait_seconds_sum") or 0) > 0
    assert total(a, "leases_denied_total") == 3  # the wait was not a denial
    assert value(a, "gpu_memory_leased_mb", node=NODE, gpu="0") == 5000


def test_metrics__gpu_memory_used_and_degraded_device(lease_system: System) -> None:
    hot = lease_system.settings.gpu_temp_limit_c + 5
    device = DeviceReading(
        index=0, name="sim", memory_total_mb=CARD, memory_used_mb=23000, temperature_c=hot
    )
    reading = NodeReading(source="simulated", devices=[device], nvml_supported=False)
    now = lease_system.services.clock.now()
    lease_system.store.report_node(NODE, reading, now, lease_system.settings.gpu_temp_limit_c)
    a = api(lease_system)
    assert value(a, "gpu_memory_used_mb", node=NODE, gpu="0") == 23000
    assert value(a, "gpu_healthy", node=NODE, gpu="0") == 0
    assert value(a, "gpu_temperature_c", node=NODE, gpu="0") == hot


def test_metrics__a_gpu_job_given_back_for_want_of_a_lease_then_run(
    backend_factory: Callable[..., Any],
) -> None:
    system = System(
        backend_factory(
            node_name=NODE,
            visibility_timeout_s=1.0,
            heartbeat_interval_s=0.2,
            job_lease_wait_s=0.2,
            job_lease_retry_s=0.1,
            lease_sweep_interval_s=0.05,
        )
    )
    try:
        registry = system.recorder.registry()
        registry.register("use_gpu", lambda ctx: list(ctx.gpu.devices) if ctx.gpu else None)
        metrics = WorkerMetrics()
        system.start_worker(observer=metrics, registry=registry, job_types=["use_gpu"])
        job_id = system.submit(type="use_gpu", gpu={"est_vram_mb": 1000})
        wait_until(
            lambda: value(of(metrics), "jobs_given_back_total", type="use_gpu", reason="gpu_lease"),
            10,
            "the job to be given back: the node has no GPUs yet",
        )
        store = system.store
        store.report_node(NODE, SimulatedProbe([CARD]).read(), system.services.clock.now(), 90)
        assert system.wait_status(job_id, timeout=20)["status"] == "done"

        w = settled(metrics, system.settings.worker_concurrency)
        given_back = value(w, "jobs_given_back_total", type="use_gpu", reason="gpu_lease")
        assert given_back is not None and given_back >= 1
        assert total(w, "leases_denied_total") == given_back  # each was a denied request
        assert value(w, "job_attempts_total", type="use_gpu") == given_back + 1
        assert value(w, "leases_granted_total") == 1
        assert value(w, "lease_wait_seconds_count") == 1
        assert value(w, "lease_expired_total") == 0
        assert value(w, "worker_jobs_started_total", type="use_gpu") == 1
        assert value(w, "worker_jobs_finished_total", type="use_gpu", outcome="done") == 1
        assert total(w, "worker_jobs_finished_total") == 1
        # The API granted no lease itself: its counters are the agents' leases only.
        assert value(api(system), "leases_granted_total") == 0
    finally:
        system.close()


def _never_fits(ctx: JobContext) -> None:
    raise AssertionError("a job whose lease can never fit must not run")


def test_metrics__a_gpu_job_that_can_never_fit_finishes_without_starting(
    backend_factory: Callable[..., Any],
) -> None:
    system = System(backend_factory(node_name=NODE, job_lease_wait_s=0.2))
    try:
        system.store.report_node(
            NODE, SimulatedProbe([CARD]).read(), system.services.clock.now(), 90
        )
        registry = system.recorder.registry()
        registry.register("huge", _never_fits)
        metrics = WorkerMetrics()
        system.start_worker(observer=metrics, registry=registry, job_types=["huge"])
        job_id = system.submit(type="huge", max_attempts=2, gpu={"est_vram_mb": 80000})
        assert system.wait_status(job_id)["status"] == "dead_letter"
        w = settled(metrics, system.settings.worker_concurrency)
        assert value(w, "worker_jobs_finished_total", type="huge", outcome="retry") == 1
        assert value(w, "worker_jobs_finished_total", type="huge", outcome="dead_letter") == 1
        assert value(w, "dead_letters_total", type="huge") == 1
        assert value(w, "leases_denied_total", reason="exceeds_capacity") == 2
        assert value(w, "worker_jobs_started_total", type="huge") is None
        assert value(w, "job_run_seconds_count", type="huge") is None  # it never ran
    finally:
        system.close()
