"""Readiness and Prometheus metrics, read as a prober and a scraper would."""

from __future__ import annotations

import time

import redis
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.harness import System, wait_until


def scrape(system: System) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = system.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_ready__when_database_redis_and_a_leader_answer(system: System) -> None:
    wait_until(lambda: system.services.engine.leading, 5, "the engine to lead")
    response = system.client.get("/ready")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ready",
        "checks": {"database": "ok", "redis": "ok", "leader": "ok"},
    }
    assert system.client.get("/health").json() == {"status": "ok"}


def test_ready__not_ready_without_redis(system: System) -> None:
    streams = system.services.streams
    real = streams.client  # type: ignore[attr-defined]
    streams.client = redis.Redis(port=1, socket_connect_timeout=0.2)  # type: ignore[attr-defined]
    try:
        response = system.client.get("/ready")
    finally:
        streams.client.close()  # type: ignore[attr-defined]
        streams.client = real  # type: ignore[attr-defined]
    assert response.status_code == 503
    body = response.json()
    assert body["error"] == "not_ready"
    assert body["message"].startswith("redis:")
    assert body["details"]["database"] == "ok"


def test_ready__not_ready_when_no_replica_leads(system: System) -> None:
    wait_until(lambda: system.services.engine.leading, 5, "the engine to lead")
    system.services.engine.stop()  # resigns
    response = system.client.get("/ready")
    assert response.status_code == 503
    assert response.json()["details"]["leader"] == "no replica leads"


def test_metrics__queue_depth_submits_and_leader_move(system: System) -> None:
    wait_until(lambda: system.services.engine.leading, 5, "the engine to lead")
    for _ in range(3):
        system.submit(type="echo")
    system.submit(type="echo", priority="low")
    samples = scrape(system)
    depth = "gpu_orchestrator_job_queue_depth"
    pending = (("priority", "normal"), ("status", "pending"), ("type", "echo"))
    assert samples[(depth, pending)] == 3
    assert samples[(depth, (("priority", "low"), ("status", "pending"), ("type", "echo")))] == 1
    assert samples[("gpu_orchestrator_jobs_submitted_total", (("type", "echo"),))] == 4
    assert samples[("gpu_orchestrator_leader", ())] == 1
    assert samples[("gpu_orchestrator_scrape_error", (("backend", "database"),))] == 0

    system.start_worker()

    def drained() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
        samples = scrape(system)
        busy = any(name == depth and value for (name, _), value in samples.items())
        return None if busy else samples

    after = wait_until(drained, 10, "every echo job to finish")
    assert (depth, pending) not in after
    assert (
        after[
            ("gpu_orchestrator_stream_pending", (("stream", system.backend.keys.stream("echo")),))
        ]
        == 0
    )


def test_metrics__reclaim_counters(backend_factory: object) -> None:
    from orchestrator.jobs import Dispatch, Priority

    system = System(backend_factory(visibility_timeout_s=0.3, heartbeat_interval_s=0.1))  # type: ignore[operator]
    try:
        system.services.engine.stop()
        job_id = system.submit(type="record")
        assert system.store.claim_job(
            Dispatch(job_id, "record", Priority.NORMAL, 1), "dead", system.services.clock.now()
        )
        time.sleep(0.4)
        system.client.post("/control/reclaim")
        samples = scrape(system)
        assert samples[("gpu_orchestrator_reclaimed_total", (("outcome", "requeued"),))] == 1
        assert samples[("gpu_orchestrator_reclaimed_total", (("outcome", "dead_lettered"),))] == 0
    finally:
        system.close()


def test_metrics__dead_letter_jobs(system: System) -> None:
    system.start_worker()
    job_id = system.submit(type="fail", max_attempts=1)
    assert system.wait_status(job_id)["status"] == "dead_letter"
    samples = scrape(system)
    assert samples[("gpu_orchestrator_dead_letter_jobs", (("type", "fail"),))] == 1
