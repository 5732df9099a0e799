"""A job's life through a worker: run, retry, dead-letter, time out, cancel, exactly once."""

from __future__ import annotations

from orchestrator.jobs import Dispatch, Priority
from tests.integration.harness import System, wait_until


def test_job__runs_to_done_with_its_result(system: System) -> None:
    system.start_worker()
    job_id = system.submit(type="echo", payload={"hello": "world"})
    job = system.wait_status(job_id)
    assert job["status"] == "done"
    assert job["result"] == {"hello": "world"}
    assert job["attempts"] == 1
    assert job["worker"]
    assert job["started_at"] and job["finished_at"]
    assert system.events(job_id) == ["submitted", "started", "completed"]


def test_job__message_acked_and_removed_after_outcome(system: System) -> None:
    system.start_worker()
    job_id = system.submit(type="record")
    system.wait_status(job_id)
    client = system.backend.make_redis()
    stream = system.backend.keys.stream("record")
    wait_until(lambda: client.xlen(stream) == 0, 5, "the entry to be deleted")
    pending = client.xpending(stream, system.backend.keys.group("record"))
    assert pending["pending"] == 0


def test_job__failure_retries_then_dead_letters_with_dlq_copy(system: System) -> None:
    system.start_worker()
    job_id = system.submit(type="fail", payload={"message": "boom"}, max_attempts=3)
    job = system.wait_status(job_id)
    assert job["status"] == "dead_letter"
    assert job["attempts"] == 3
    assert "boom" in job["error"]
    assert system.events(job_id) == [
        "submitted",
        "started",
        "retry_scheduled",
        "started",
        "retry_scheduled",
        "started",
        "dead_lettered",
    ]
    client = system.backend.make_redis()
    entries = client.xrange(system.backend.keys.dlq("fail"))
    assert [e[1]["job_id"] for e in entries] == [job_id]
    assert "boom" in entries[0][1]["error"]


def test_job__retry_waits_for_backoff(backend_factory: object) -> None:
    system = System(backend_factory(retry_backoff_base_s=0.5, retry_backoff_max_s=0.5))  # type: ignore[operator]
    try:
        system.start_worker()
        job_id = system.submit(type="fail", max_attempts=2)
        system.wait_status(job_id)
        events = system.client.get(f"/jobs/{job_id}/events").json()["events"]
        retry = next(e for e in events if e["event"] == "retry_scheduled")
        second_start = [e for e in events if e["event"] == "started"][1]
        assert second_start["at"] >= retry["detail"]["retry_at"]
    finally:
        system.close()


def test_job__timeout_fails_the_attempt_and_worker_keeps_serving(system: System) -> None:
    system.start_worker(concurrency=1)
    slow = system.submit(type="stubborn", timeout_s=0.3, max_attempts=1)
    job = system.wait_status(slow)
    assert job["status"] == "dead_letter"
    assert "timed out after 0.3s" in job["error"]
    quick = system.submit(type="echo", payload=1)
    assert system.wait_status(quick)["status"] == "done"


def test_job__duplicate_delivery_never_runs_twice(system: System) -> None:
    job_id = system.submit(type="record")
    # The same attempt published again, as a relay or a retry of XADD might.
    system.services.streams.publish([Dispatch(job_id, "record", Priority.NORMAL, 1)])
    assert system.stream_len("record") == 2
    system.start_worker()
    system.wait_status(job_id)
    wait_until(lambda: system.stream_len("record") == 0, 5, "both messages to be acked")
    assert system.recorder.count(job_id) == 1


def test_job__stale_attempt_message_is_acked_without_running(system: System) -> None:
    system.start_worker()
    job_id = system.submit(type="record")
    system.wait_status(job_id)
    system.services.streams.publish([Dispatch(job_id, "record", Priority.NORMAL, 1)])
    wait_until(lambda: system.stream_len("record") == 0, 5, "the stale message to be acked")
    assert system.recorder.count(job_id) == 1
    assert system.job(job_id)["status"] == "done"


def test_job__progress_is_visible_while_running(system: System) -> None:
    system.start_worker()
    job_id = system.submit(type="sleep", payload={"seconds": 3})
    wait_until(lambda: system.job(job_id)["progress"], 5, "progress")
    assert system.job(job_id)["progress"]["total_s"] == 3
    system.client.post(f"/jobs/{job_id}/cancel")
    system.wait_status(job_id)


def test_job__unserialisable_result_fails_the_attempt(system: System) -> None:
    registry = system.recorder.registry()
    registry.register("bad_result", lambda ctx: {1, 2})
    system.start_worker(registry=registry)
    job_id = system.submit(type="bad_result", max_attempts=1)
    job = system.wait_status(job_id)
    assert job["status"] == "dead_letter"
    assert "not JSON-serialisable" in job["error"]


def test_cancel__pending_job_never_runs(system: System) -> None:
    job_id = system.submit(type="record")
    response = system.client.post(f"/jobs/{job_id}/cancel")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    system.start_worker()
    wait_until(lambda: system.stream_len("record") == 0, 5, "the message to be acked")
    assert system.recorder.count(job_id) == 0
    assert system.job(job_id)["status"] == "cancelled"


def test_cancel__running_job_sees_it_and_ends_cancelled(system: System) -> None:
    system.start_worker()
    job_id = system.submit(type="block")
    system.wait_status(job_id, "running")
    response = system.client.post(f"/jobs/{job_id}/cancel")
    assert response.status_code == 202
    assert response.json()["cancel_requested"] is True
    job = system.wait_status(job_id)
    assert job["status"] == "cancelled"
    assert system.events(job_id)[-2:] == ["cancel_requested", "cancelled"]


def test_cancel__handler_that_ignores_it_is_stopped(system: System) -> None:
    system.start_worker(concurrency=1)
    job_id = system.submit(type="stubborn")
    system.wait_status(job_id, "running")
    system.client.post(f"/jobs/{job_id}/cancel")
    assert system.wait_status(job_id)["status"] == "cancelled"
    # The slot is free again.
    assert system.wait_status(system.submit(type="echo"))["status"] == "done"


def test_cancel__finished_job_conflicts(system: System) -> None:
    system.start_worker()
    job_id = system.submit(type="echo")
    system.wait_status(job_id)
    before = system.snapshot()
    response = system.client.post(f"/jobs/{job_id}/cancel")
    assert response.status_code == 409
    assert response.json()["error"] == "job_finished"
    assert system.snapshot() == before


def test_jobs__many_finish_exactly_once_across_two_workers(system: System) -> None:
    system.start_worker(concurrency=4)
    system.start_worker(concurrency=4)
    body = {"jobs": [{"type": "record", "payload": {"i": i}} for i in range(200)]}
    ids = [j["job_id"] for j in system.client.post("/jobs/submit_batch", json=body).json()["jobs"]]
    wait_until(lambda: len(system.recorder.runs) >= 200, 30, "200 runs")
    for job_id in ids:
        assert system.wait_status(job_id)["status"] == "done"
    assert sorted(system.recorder.order()) == sorted(ids)
