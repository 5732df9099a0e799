"""Explain, queue statistics and re-prioritising, through the API on every backend."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from orchestrator.auth import Role
from orchestrator.gpu import SimulatedProbe
from orchestrator.store.tables import gpu_quarantines
from tests.integration.harness import System, wait_until
from tests.integration.test_security_matrix import add_token, bearer

BATCH = "/jobs/submit_batch"


def test_priority__reprioritised_low_job_overtakes_the_low_backlog(system: System) -> None:
    backlog = system.client.post(BATCH, json={"jobs": [{"type": "record", "priority": "low"}] * 40})
    assert backlog.status_code == 202
    target = system.submit(type="record", priority="low")
    moved = system.client.patch(f"/jobs/{target}/priority", json={"priority": "high"})
    assert moved.status_code == 200, moved.text
    assert moved.json()["priority"] == "high"
    # Durable: the row, its audit trail, and its message in the new band's stream.
    assert system.job(target)["priority"] == "high"
    assert system.stream_len("record", "high") == 1
    assert "reprioritised" in system.events(target)

    system.start_worker(concurrency=1)
    wait_until(lambda: len(system.recorder.runs) == 41, 30, "every job to run")
    assert system.recorder.order()[0] == target
    # The message left in the low band failed its claim: the job ran once.
    assert system.recorder.count(target) == 1
    wait_until(lambda: system.stream_len("record", "low") == 0, 10, "the low band to drain")


def test_priority__refused_unless_waiting_and_writes_nothing(system: System) -> None:
    system.start_worker()
    done = system.submit(type="record")
    system.wait_status(done, "done")
    before = system.snapshot()
    conflict = system.client.patch(f"/jobs/{done}/priority", json={"priority": "high"})
    assert conflict.status_code == 409
    assert conflict.json()["details"]["status"] == "done"
    unknown = system.client.patch(
        "/jobs/00000000-0000-7000-8000-000000000000/priority", json={"priority": "high"}
    )
    assert unknown.status_code == 404
    bad = system.client.patch(f"/jobs/{done}/priority", json={"priority": "urgent"})
    assert bad.status_code == 422
    assert system.snapshot() == before


def test_explain__position_in_its_band_and_no_worker(system: System) -> None:
    system.client.post(BATCH, json={"jobs": [{"type": "record"}] * 2})
    system.submit(type="record", priority="high")
    system.submit(type="record", priority="low")  # behind it: not counted
    mine = system.submit(type="record")
    answer = system.client.get(f"/jobs/{mine}/explain")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["job_id"] == mine and body["status"] == "pending"
    assert not body["runnable"]
    by_code = {r["code"]: r for r in body["reasons"]}
    assert by_code["queue_position"]["ahead"] == 3
    assert by_code["queue_position"]["ahead_by_band"] == {"critical": 0, "high": 1, "normal": 2}
    assert by_code["no_worker"]["blocking"]
    assert (
        system.client.get("/jobs/00000000-0000-7000-8000-000000000000/explain").status_code == 404
    )


def test_explain__delayed_job(system: System) -> None:
    system.start_worker()
    later = system.submit(type="record", delay_s=600)
    body = system.client.get(f"/jobs/{later}/explain").json()
    assert [r["code"] for r in body["reasons"]] == ["delayed"]
    assert body["reasons"][0]["wait_s"] > 590
    assert "submitted to run at" in body["summary"]


def test_queue_statistics__depth_waits_throughput_and_success(system: System) -> None:
    system.start_worker()
    ids = [system.submit(type="record") for _ in range(3)]
    for job_id in ids:
        system.wait_status(job_id, "done")
    system.stop_worker(system._workers[0][0])
    system.submit(type="record", priority="low")
    system.submit(type="other", priority="critical")
    answer = system.client.get("/queue/statistics", params={"type": "record"})
    assert answer.status_code == 200, answer.text
    (record,) = answer.json()["queues"]
    assert record["type"] == "record"
    assert record["pending_by_band"] == {"critical": 0, "high": 0, "normal": 0, "low": 1}
    assert record["pending"] == 1 and record["running"] == 0
    assert record["done"] == 3 and record["throughput_per_hour"] == 3
    assert record["success_rate"] == 1.0
    assert record["claimed_in_window"] == 3
    assert 0 <= record["avg_wait_s"] <= record["p95_wait_s"] < 30
    every = system.client.get("/queue/statistics").json()["queues"]
    assert [q["type"] for q in every] == ["other", "record"]
    assert system.client.get("/queue/statistics", params={"window_s": 0}).status_code == 422


def test_insight__a_submitter_explains_and_moves_only_its_own_jobs(
    backend_factory: Callable[..., Any],
) -> None:
    system = System(backend_factory())
    try:
        alice = bearer(add_token(system, Role.SUBMITTER, "alice"))
        bob = bearer(add_token(system, Role.SUBMITTER, "bob"))
        admin = bearer(add_token(system, Role.ADMIN, "ops"))
        submitted = system.client.post(
            "/jobs/submit", json={"type": "record", "delay_s": 3600}, headers=alice
        )
        job_id = submitted.json()["job_id"]
        before = system.snapshot()
        assert system.client.get(f"/jobs/{job_id}/explain", headers=bob).status_code == 404
        moved = system.client.patch(
            f"/jobs/{job_id}/priority", json={"priority": "high"}, headers=bob
        )
        assert moved.status_code == 404
        assert system.snapshot() == before
        assert system.client.get(f"/jobs/{job_id}/explain", headers=alice).status_code == 200
        assert system.client.get("/queue/statistics", headers=bob).status_code == 200
        by_admin = system.client.patch(
            f"/jobs/{job_id}/priority", json={"priority": "high"}, headers=admin
        )
        assert by_admin.status_code == 200
        (event,) = [
            e
            for e in system.client.get(f"/jobs/{job_id}/events", headers=alice).json()["events"]
            if e["event"] == "reprioritised"
        ]
        assert event["actor"] == "ops"
    finally:
        system.close()


def test_explain__gpu_job_names_the_lease_holding_its_capacity(system: System) -> None:
    system.store.report_node(
        "n1", SimulatedProbe([24576]).read(), system.services.clock.now(), 90.0
    )
    held = system.client.post("/leases", json={"agent": "bob", "est_vram_mb": 20000})
    assert held.status_code == 201, held.text
    token = held.json()["token"]
    waiting = system.submit(type="record", gpu={"est_vram_mb": 16000})
    huge = system.submit(type="record", gpu={"est_vram_mb": 80000})

    body = system.client.get(f"/jobs/{waiting}/explain").json()
    by_code = {r["code"]: r for r in body["reasons"]}
    assert [h["token"] for h in by_code["gpu_capacity"]["holders"]] == [token]
    assert by_code["gpu_capacity"]["holders"][0]["agent"] == "bob"

    too_big = system.client.get(f"/jobs/{huge}/explain").json()
    assert not too_big["runnable"]
    assert "its lease can never be granted" in too_big["summary"]


def test_explain__quarantined_device(system: System) -> None:
    now = system.services.clock.now()
    system.store.report_node("n1", SimulatedProbe([24576]).read(), now, 90.0)
    with system.store.engine.begin() as conn:
        conn.execute(
            gpu_quarantines.insert().values(node="n1", idx=0, reason="3 Xid faults", since=now)
        )
    job_id = system.submit(type="record", gpu={"est_vram_mb": 1000})
    body = system.client.get(f"/jobs/{job_id}/explain").json()
    by_code = {r["code"]: r for r in body["reasons"]}
    assert by_code["device_quarantined"]["devices"] == ["n1/0"]
    assert "3 Xid faults" in by_code["device_quarantined"]["message"]
    assert by_code["no_gpus"]["blocking"]


def test_explain__claimed_job_waits_for_its_lease_then_is_given_back(
    backend_factory: Callable[..., Any],
) -> None:
    # The job waits 4 s for its lease: room for two reads of its explanation while it waits,
    # even on a loaded machine.
    system = System(backend_factory(job_lease_wait_s=4.0, job_lease_retry_s=30.0))
    try:
        node = system.settings.resolved_node_name()
        system.store.report_node(
            node, SimulatedProbe([24576]).read(), system.services.clock.now(), 90.0
        )
        held = system.client.post(
            "/leases", json={"agent": "bob", "est_vram_mb": 20000, "ttl_s": 60}
        )
        assert held.status_code == 201, held.text
        job_id = system.submit(type="record", gpu={"est_vram_mb": 16000})
        system.start_worker()

        def explained(code: str) -> dict[str, Any] | None:
            body: dict[str, Any] = system.client.get(f"/jobs/{job_id}/explain").json()
            return body if code in {r["code"] for r in body["reasons"]} else None

        waiting = wait_until(lambda: explained("lease_waiting"), 10, "the lease wait")
        assert waiting["status"] == "claimed"
        by_code = {r["code"]: r for r in waiting["reasons"]}
        assert by_code["lease_waiting"]["node"] == node
        assert by_code["gpu_capacity"]["holders"][0]["token"] == held.json()["token"]

        given_back = wait_until(lambda: explained("lease_retry"), 10, "the give-back")
        assert given_back["status"] == "pending" and not given_back["runnable"]
    finally:
        system.close()
