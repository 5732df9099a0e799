"""Submitting jobs: durable rows first, then messages; idempotency; batches; delays."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tests.integration.harness import System, wait_until


def test_submit__row_committed_and_message_published(system: System) -> None:
    response = system.client.post(
        "/jobs/submit", json={"type": "inference_jobs", "payload": {"prompt": "hi"}}
    )
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "pending"
    job = system.job(body["job_id"])
    assert job["type"] == "inference_jobs"
    assert job["payload"] == {"prompt": "hi"}
    assert job["attempts"] == 0
    assert job["max_attempts"] == system.settings.default_max_attempts
    assert system.stream_len("inference_jobs") == 1
    assert system.events(body["job_id"]) == ["submitted"]


def test_submit__priority_goes_to_its_band_stream(system: System) -> None:
    system.submit(type="inference_jobs", priority="critical")
    system.submit(type="inference_jobs", priority="low")
    assert system.stream_len("inference_jobs", "critical") == 1
    assert system.stream_len("inference_jobs", "low") == 1
    assert system.stream_len("inference_jobs") == 0


def test_submit__same_idempotency_key_and_body_returns_same_job(system: System) -> None:
    body = {"type": "echo", "payload": {"n": 1}, "idempotency_key": "order-42"}
    first = system.client.post("/jobs/submit", json=body)
    again = system.client.post("/jobs/submit", json=body)
    assert first.status_code == 202
    assert again.status_code == 200
    assert again.json()["job_id"] == first.json()["job_id"]
    assert system.snapshot()["rows"]["jobs"] == 1
    assert system.stream_len("echo") == 1


def test_submit__same_idempotency_key_other_body_conflicts(system: System) -> None:
    system.submit(type="echo", payload={"n": 1}, idempotency_key="order-42")
    before = system.snapshot()
    response = system.client.post(
        "/jobs/submit", json={"type": "echo", "payload": {"n": 2}, "idempotency_key": "order-42"}
    )
    assert response.status_code == 409
    assert response.json()["error"] == "idempotency_conflict"
    assert system.snapshot() == before


def test_submit_batch__all_created_and_published(system: System) -> None:
    jobs = [{"type": "echo", "payload": {"i": i}} for i in range(50)]
    response = system.client.post("/jobs/submit_batch", json={"jobs": jobs})
    assert response.status_code == 202
    items = response.json()["jobs"]
    assert len(items) == 50 and all(item["created"] for item in items)
    assert len({item["job_id"] for item in items}) == 50
    assert system.stream_len("echo") == 50
    assert system.job(items[7]["job_id"])["payload"] == {"i": 7}


def test_submit_batch__one_bad_job_writes_nothing(system: System) -> None:
    before = system.snapshot()
    jobs = [{"type": "echo"}] * 5 + [{"type": "Not-Valid"}]
    response = system.client.post("/jobs/submit_batch", json={"jobs": jobs})
    assert response.status_code == 422
    assert system.snapshot() == before


def test_submit_batch__conflicting_key_writes_nothing(system: System) -> None:
    system.submit(type="echo", payload={"n": 1}, idempotency_key="k1")
    before = system.snapshot()
    jobs = [{"type": "echo", "payload": {"n": i}} for i in range(3)]
    jobs.append({"type": "echo", "payload": {"n": 99}, "idempotency_key": "k1"})
    response = system.client.post("/jobs/submit_batch", json={"jobs": jobs})
    assert response.status_code == 409
    assert system.snapshot() == before


def test_submit_batch__replayed_key_returns_existing_job(system: System) -> None:
    first = system.submit(type="echo", payload={"n": 1}, idempotency_key="k1")
    jobs = [{"type": "echo", "payload": {"n": 1}, "idempotency_key": "k1"}, {"type": "echo"}]
    items = system.client.post("/jobs/submit_batch", json={"jobs": jobs}).json()["jobs"]
    assert items[0] == {"job_id": first, "status": "pending", "created": False}
    assert items[1]["created"] is True
    assert system.stream_len("echo") == 2


def test_submit_batch__duplicate_keys_in_one_batch_rejected(system: System) -> None:
    before = system.snapshot()
    jobs = [
        {"type": "echo", "idempotency_key": "same"},
        {"type": "echo", "idempotency_key": "same"},
    ]
    response = system.client.post("/jobs/submit_batch", json={"jobs": jobs})
    assert response.status_code == 422
    assert system.snapshot() == before


def test_submit_batch__over_the_limit_rejected(backend_factory: object) -> None:
    system = System(backend_factory(max_batch_size=10))  # type: ignore[operator]
    try:
        before = system.snapshot()
        response = system.client.post("/jobs/submit_batch", json={"jobs": [{"type": "echo"}] * 11})
        assert response.status_code == 422
        assert "at most 10" in response.json()["message"]
        assert system.snapshot() == before
    finally:
        system.close()


def test_submit__delayed_job_is_published_when_due(system: System) -> None:
    job_id = system.submit(type="echo", delay_s=0.6)
    assert system.stream_len("echo") == 0
    job = system.job(job_id)
    created = datetime.fromisoformat(job["created_at"])
    assert datetime.fromisoformat(job["available_at"]) - created >= timedelta(seconds=0.59)
    wait_until(lambda: system.stream_len("echo") == 1, 5, "the scheduler to publish it")


def test_submit__run_at_in_the_past_runs_now(system: System) -> None:
    past = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    job_id = system.submit(type="echo", run_at=past)
    assert system.stream_len("echo") == 1
    job = system.job(job_id)
    assert job["available_at"] >= job["created_at"]


def test_submit__redis_down_still_accepts_and_publishes_later(system: System) -> None:
    streams = system.services.streams
    real_client = streams.client  # type: ignore[attr-defined]
    broken = __import__("redis").Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    streams.client = broken  # type: ignore[attr-defined]
    system.services.engine.stop()
    try:
        job_id = system.submit(type="echo", payload={"while": "redis is down"})
        assert system.job(job_id)["status"] == "pending"
    finally:
        streams.client = real_client  # type: ignore[attr-defined]
        broken.close()
    assert system.stream_len("echo") == 0
    system.services.engine.start()
    wait_until(lambda: system.stream_len("echo") == 1, 5, "the job to be published")
    system.start_worker()
    assert system.wait_status(job_id)["status"] == "done"


def test_submit__idempotency_compares_the_body_with_run_at_in_utc(system: System) -> None:
    first = system.submit(type="echo", run_at="2031-01-01T00:00:00", idempotency_key="k")
    for same in [
        {"run_at": "2031-01-01T00:00:00Z"},
        {"run_at": "2031-01-01T01:00:00+01:00"},
        {"run_at": "2031-01-01T00:00:00", "priority": "normal"},
    ]:
        response = system.client.post(
            "/jobs/submit", json={"type": "echo", "idempotency_key": "k", **same}
        )
        assert response.status_code == 200, (same, response.text)
        assert response.json()["job_id"] == first
    other = {"type": "echo", "idempotency_key": "k", "run_at": "2031-01-01T00:00:01Z"}
    assert system.client.post("/jobs/submit", json=other).status_code == 409
    # A field the first request left to the server's default is part of another body: the
    # comparison must not depend on ORCH_DEFAULT_* settings, which may change between retries.
    explicit = {
        "type": "echo",
        "idempotency_key": "k",
        "run_at": "2031-01-01T00:00:00",
        "max_attempts": system.settings.default_max_attempts,
    }
    assert system.client.post("/jobs/submit", json=explicit).status_code == 409


def test_submit__idempotency_keys_compare_exactly(system: System) -> None:
    keys = ["Req-1", "req-1", "req-1 ", "rèq-1"]
    ids = [system.submit(type="echo", idempotency_key=k) for k in keys]
    assert len(set(ids)) == len(keys)
    again = system.client.post("/jobs/submit", json={"type": "echo", "idempotency_key": "req-1"})
    assert (again.status_code, again.json()["job_id"]) == (200, ids[1])
