"""Graceful shutdown: finish within the grace period, else give jobs back unclaimed."""

from __future__ import annotations

import threading

from tests.integration.harness import System, wait_until


def test_shutdown__running_job_finishes_within_grace(system: System) -> None:
    worker = system.start_worker()
    job_id = system.submit(type="block")
    system.wait_status(job_id, "running")
    worker.stop()
    threading.Timer(0.3, system.recorder.release.set).start()
    assert worker.wait_stopped(10)
    job = system.job(job_id)
    assert job["status"] == "done"
    assert job["result"] == "released"


def test_shutdown__past_grace_job_goes_back_to_pending(backend_factory: object) -> None:
    system = System(backend_factory(shutdown_grace_s=0.3))  # type: ignore[operator]
    try:
        worker = system.start_worker()
        job_id = system.submit(type="block")
        system.wait_status(job_id, "running")
        system.stop_worker(worker)
        job = system.job(job_id)
        assert job["status"] == "pending"
        assert job["attempts"] == 0  # an interrupted attempt does not count
        assert job["worker"] is None
        assert system.events(job_id)[-1] == "released"
        # Nothing stays claimed in Redis either.
        client = system.backend.make_redis()
        pending = client.xpending(
            system.backend.keys.stream("block"), system.backend.keys.group("block")
        )
        assert pending["pending"] == 0
        # Another worker runs it to the end.
        system.recorder.release.set()
        system.start_worker()
        job = system.wait_status(job_id)
        assert job["status"] == "done"
        assert job["attempts"] == 1
        assert system.recorder.count(job_id) == 2
    finally:
        system.close()


def test_shutdown__idle_worker_stops_at_once(system: System) -> None:
    worker = system.start_worker()
    client = system.backend.make_redis()
    stream = system.backend.keys.stream("echo")
    wait_until(lambda: client.exists(stream), 5, "the worker to create its groups")
    system.stop_worker(worker, timeout=3)
