"""Metrics read as Prometheus would, after driving jobs and reclaims on both backends: each
value must move by exactly what was done (docs/metrics.md). GPUs and leases:
test_metrics_gpus.py."""

from __future__ import annotations

import socket
import urllib.request
from datetime import timedelta
from typing import Any

from orchestrator.fleet import WorkerRegistration
from orchestrator.jobs import Dispatch, Priority
from tests.integration.harness import System, wait_until
from tests.integration.metrics_support import api, of, parse, settled, total, value
from workers.metrics import WorkerMetrics, serve_metrics

# -- jobs --------------------------------------------------------------------------------------


def test_metrics__done_retried_and_dead_lettered_jobs(system: System) -> None:
    metrics = WorkerMetrics()
    worker = system.start_worker(observer=metrics, concurrency=2, worker_id="w-metrics")
    done = [system.submit(type="echo", payload={"i": i}) for i in range(3)]
    failing = system.submit(type="fail", max_attempts=2)
    for job_id in done:
        assert system.wait_status(job_id)["status"] == "done"
    assert system.wait_status(failing)["status"] == "dead_letter"

    w = settled(metrics, 2)
    assert value(w, "job_attempts_total", type="echo") == 3
    assert value(w, "worker_jobs_started_total", type="echo") == 3
    assert value(w, "worker_jobs_finished_total", type="echo", outcome="done") == 3
    assert value(w, "job_run_seconds_count", type="echo") == 3
    assert value(w, "job_attempts_total", type="fail") == 2
    assert value(w, "worker_jobs_started_total", type="fail") == 2
    assert value(w, "worker_jobs_finished_total", type="fail", outcome="retry") == 1
    assert value(w, "worker_jobs_finished_total", type="fail", outcome="dead_letter") == 1
    assert value(w, "job_run_seconds_count", type="fail") == 2
    assert value(w, "job_retries_total", type="fail") == 1
    assert value(w, "dead_letters_total", type="fail") == 1
    assert total(w, "worker_jobs_finished_total") == 5  # no other outcome
    assert total(w, "job_retries_total") == 1 and total(w, "dead_letters_total") == 1
    assert total(w, "worker_deliveries_skipped_total") == 0
    assert total(w, "jobs_given_back_total") == 0
    assert value(w, "job_run_seconds_bucket", type="echo", le="+Inf") == 3
    assert (value(w, "job_run_seconds_sum", type="echo") or 0) > 0
    assert value(w, "worker_slots", state="busy") == 0
    info = {"worker": "w-metrics", "node": worker.node, "pool": ""}
    assert value(w, "worker_info", **info) == 1
    assert total(w, "leases_granted_total") == 0  # no GPU job ran

    a = api(system)
    assert value(a, "jobs_submitted_total", type="echo") == 3
    assert value(a, "jobs_submitted_total", type="fail") == 1
    assert value(a, "dead_letter_jobs", type="fail") == 1
    assert total(a, "job_queue_depth") == 0
    # Workers count the dead letters they make; the API's reclaimer made none.
    assert total(a, "dead_letters_total") == 0
    assert value(a, "workers", pool="", status="running") == 1
    assert value(a, "leader") == 1


def test_metrics__running_gauge_busy_slots_and_a_job_released_at_shutdown(
    system: System,
) -> None:
    metrics = WorkerMetrics()
    settings = system.settings.model_copy(update={"shutdown_grace_s": 0.1})
    worker = system.start_worker(observer=metrics, concurrency=2, settings=settings)
    job_id = system.submit(type="block")
    running = wait_until(
        lambda: (s := of(metrics)) and value(s, "worker_jobs_running") == 1 and s,
        10,
        "the job to run",
    )
    assert value(running, "worker_slots", state="busy") == 1
    assert value(running, "worker_slots", state="idle") == 1
    assert value(running, "worker_jobs_started_total", type="block") == 1
    assert total(running, "worker_jobs_finished_total") == 0

    system.stop_worker(worker)  # gives the running job back
    assert system.job(job_id)["status"] == "pending"
    w = of(metrics)
    assert value(w, "worker_jobs_finished_total", type="block", outcome="released") == 1
    assert total(w, "worker_jobs_finished_total") == 1
    assert value(w, "job_run_seconds_count", type="block") == 1
    assert value(w, "worker_jobs_running") == 0


# -- reclaims ----------------------------------------------------------------------------------


def reclaim_now(system: System) -> dict[str, int]:
    """One reclaim pass through the API that judges every heartbeat stale (a visibility
    timeout of 0), instead of waiting for a real one to pass."""
    reclaimer = system.services.reclaimer
    real = reclaimer.settings
    reclaimer.settings = real.model_copy(update={"visibility_timeout_s": 0.0})
    try:
        response = system.client.post("/control/reclaim")
    finally:
        reclaimer.settings = real
    assert response.status_code == 200, response.text
    report: dict[str, int] = response.json()
    return report


def test_metrics__jobs_whose_worker_died_are_requeued_or_dead_lettered(system: System) -> None:
    system.services.engine.stop()  # only this test's reclaim pass runs
    requeued = system.submit(type="record", max_attempts=2)
    lost = system.submit(type="record", max_attempts=1)
    now = system.services.clock.now()
    for job_id in (requeued, lost):
        dispatch = Dispatch(job_id, "record", Priority.NORMAL, 1)
        assert system.store.claim_job(dispatch, "dead-worker", now)  # then it "died"

    report = reclaim_now(system)
    assert (report["requeued"], report["dead_lettered"]) == (1, 1)
    a = api(system)
    assert value(a, "reclaimed_total", outcome="requeued") == 1
    assert value(a, "reclaimed_total", outcome="dead_lettered") == 1
    assert value(a, "reclaimed_total", outcome="republished") == 0
    assert value(a, "dead_letters_total", type="record") == 1
    assert value(a, "dead_letter_jobs", type="record") == 1
    assert value(a, "job_queue_depth", type="record", status="pending", priority="normal") == 1

    # A live worker then runs attempt 2, and skips the two stale attempt-1 messages.
    metrics = WorkerMetrics()
    system.start_worker(observer=metrics)
    assert system.wait_status(requeued)["status"] == "done"
    assert system.job(requeued)["attempts"] == 2
    w = wait_until(
        lambda: (
            (s := of(metrics))
            and value(s, "worker_deliveries_skipped_total", type="record") == 2
            and s
        ),
        10,
        "the stale deliveries to be skipped",
    )
    w = settled(metrics, system.settings.worker_concurrency)
    assert value(w, "job_attempts_total", type="record") == 1
    assert value(w, "worker_jobs_finished_total", type="record", outcome="done") == 1
    assert total(w, "worker_jobs_finished_total") == 1
    a = api(system)
    assert total(a, "job_queue_depth") == 0
    assert value(a, "reclaimed_total", outcome="requeued") == 1  # nothing more since
    assert value(a, "stream_pending", stream=system.backend.keys.stream("record")) == 0


def test_metrics__result_of_an_attempt_reclaimed_from_under_its_worker_is_fenced(
    system: System,
) -> None:
    system.services.engine.stop()
    metrics = WorkerMetrics()
    system.start_worker(observer=metrics, concurrency=1)
    job_id = system.submit(type="block", max_attempts=3)
    wait_until(lambda: system.recorder.count(job_id) == 1, 10, "attempt 1 to run")

    # Its worker lives, but "missed" its heartbeats. A heartbeat that lands just as a pass
    # starts is newer than the pass's cutoff: that pass finds nothing, and the next one goes.
    passes = [reclaim_now(system)]
    while not passes[-1]["requeued"] and len(passes) < 20:
        passes.append(reclaim_now(system))
    assert [p["requeued"] for p in passes] == [0] * (len(passes) - 1) + [1]
    system.recorder.release.set()  # attempt 1 returns: its result is rejected
    assert system.wait_status(job_id)["status"] == "done"
    assert system.job(job_id)["attempts"] == 2

    w = settled(metrics, 1)
    assert value(w, "worker_jobs_finished_total", type="block", outcome="fenced") == 1
    assert value(w, "worker_jobs_finished_total", type="block", outcome="done") == 1
    assert value(w, "job_attempts_total", type="block") == 2
    assert value(w, "job_run_seconds_count", type="block") == 2
    assert value(api(system), "reclaimed_total", outcome="requeued") == 1


# -- workers and pools -------------------------------------------------------------------------


def test_metrics__workers_per_pool_and_status(system: System) -> None:
    created = system.client.post(
        "/pools", json={"name": "gpu-a", "job_types": ["echo"], "desired": 2, "max_workers": 4}
    )
    assert created.status_code == 201, created.text
    worker = system.start_worker(pool="gpu-a", job_types=["echo"], worker_id="w-a")
    system.start_worker(job_types=["echo"], worker_id="w-none")
    # A worker of the pool whose heartbeats stopped a minute ago: lost, leader or not.
    silent = WorkerRegistration("w-gone", "n9", "gpu-a", 1, ["echo"], 1)
    system.store.register_worker(silent, system.services.clock.now() - timedelta(seconds=60))

    def pools() -> Any:
        a = api(system)
        running = value(a, "workers", pool="gpu-a", status="running")
        return a if running == 1 and value(a, "workers", pool="", status="running") == 1 else None

    a = wait_until(pools, 10, "both workers to register")
    assert value(a, "workers", pool="gpu-a", status="lost") == 1
    assert total(a, "workers") == 3
    assert value(a, "pool_desired_workers", pool="gpu-a") == 2

    system.stop_worker(worker)  # stopped rows are not counted
    a = api(system)
    assert value(a, "workers", pool="gpu-a", status="running") is None
    assert total(a, "workers") == 2
    assert system.client.post("/pools/gpu-a/stop").status_code == 200
    assert value(api(system), "pool_desired_workers", pool="gpu-a") is None


# -- a worker's own endpoint -------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_worker_endpoint__serves_its_metrics_on_the_first_free_port(system: System) -> None:
    base = free_port()
    settings = system.settings.model_copy(
        update={"worker_metrics_port": base, "worker_metrics_port_span": 8}
    )
    with socket.socket() as taken:  # another worker of this host holds the first port
        taken.bind(("127.0.0.1", base))
        taken.listen()
        metrics = WorkerMetrics()
        endpoint = serve_metrics(metrics, settings)
        assert endpoint is not None
        try:
            assert base < endpoint.port < base + 8
            assert endpoint.host == "127.0.0.1"
            system.start_worker(observer=metrics)
            job_id = system.submit(type="echo")
            assert system.wait_status(job_id)["status"] == "done"
            settled(metrics, system.settings.worker_concurrency)
            url = f"http://127.0.0.1:{endpoint.port}/metrics"
            with urllib.request.urlopen(url, timeout=5) as response:
                assert response.status == 200
                served = parse(response.read().decode())
            assert value(served, "worker_jobs_finished_total", type="echo", outcome="done") == 1
            assert value(served, "job_attempts_total", type="echo") == 1
        finally:
            endpoint.close()

        # Every port of the span taken: no endpoint, and the worker is not stopped by it.
        only = settings.model_copy(update={"worker_metrics_port_span": 1})
        assert serve_metrics(WorkerMetrics(), only) is None
    off = settings.model_copy(update={"worker_metrics_port": 0})
    assert serve_metrics(WorkerMetrics(), off) is None
