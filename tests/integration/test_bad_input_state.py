"""Requests that are well formed but wrong for the state they meet: replays of released or
expired lease tokens, cancels of finished jobs, replays of jobs not dead-lettered, unknown
ids of every shape. A clear 4xx (or the idempotent answer), and nothing written."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from orchestrator.gpu import SimulatedProbe
from tests.integration.harness import System

UNKNOWN_TOKEN = "0" * 32
UNKNOWN_JOB = "01a2081d-9d5a-70e5-b9fb-d1caae1f9b91"


@pytest.fixture
def gpu_system(backend_factory: Any) -> Iterator[System]:
    system = System(backend_factory(node_name="n1", lease_max_ttl_s=60.0), run_engine=False)
    reading = SimulatedProbe([24576]).read()
    system.store.report_node("n1", reading, system.services.clock.now(), 90.0)
    try:
        yield system
    finally:
        system.close()


def _lease(system: System) -> str:
    response = system.client.post("/leases", json={"agent": "a", "est_vram_mb": 100, "ttl_s": 30})
    assert response.status_code == 201, response.text
    token: str = response.json()["token"]
    return token


def test_lease__heartbeat_after_release_is_409_and_release_is_idempotent(
    gpu_system: System,
) -> None:
    token = _lease(gpu_system)
    released = gpu_system.client.post(f"/leases/{token}/release", json={"success": True})
    assert released.status_code == 200, released.text
    before = gpu_system.snapshot(contents=True)

    beat = gpu_system.client.post(f"/leases/{token}/heartbeat", json={"used_vram_mb": 50})
    assert beat.status_code == 409, beat.text
    assert beat.json()["error"] == "lease_released"
    # Releasing again answers the lease as it is, and changes nothing (not even `success`).
    again = gpu_system.client.post(f"/leases/{token}/release", json={"success": False})
    assert again.status_code == 200, again.text
    assert again.json()["status"] == "released"
    assert again.json()["success"] is True
    assert gpu_system.snapshot(contents=True) == before


def test_lease__unknown_or_malformed_token(gpu_system: System) -> None:
    _lease(gpu_system)
    before = gpu_system.snapshot(contents=True)
    for token, status in [
        (UNKNOWN_TOKEN, 404),
        ("A" * 32, 422),  # upper-case hex: not a token this server issues
        ("0" * 31, 422),
        ("0" * 33, 422),
        ("0" * 31 + "\u00e9", 422),
        ("%00" + "0" * 29, 422),
    ]:
        for action in ["heartbeat", "release", None]:
            path = f"/leases/{token}" + (f"/{action}" if action else "")
            response = gpu_system.client.request("POST" if action else "GET", path)
            assert response.status_code == status, (path, response.text)
            assert response.json()["error"]
    assert gpu_system.snapshot(contents=True) == before


def test_cancel__finished_job_is_409_and_nothing_written(system: System) -> None:
    system.start_worker()
    job_id = system.submit(type="echo", payload={"x": 1})
    system.wait_status(job_id, "done")
    before = system.snapshot()
    response = system.client.post(f"/jobs/{job_id}/cancel")
    assert response.status_code == 409, response.text
    assert response.json()["error"]
    assert system.job(job_id)["status"] == "done"
    assert system.snapshot() == before


def test_cancel__cancelled_job_again_is_409(system: System) -> None:
    job_id = system.submit(type="echo", delay_s=3600)
    assert system.client.post(f"/jobs/{job_id}/cancel").status_code == 200
    before = system.snapshot()
    response = system.client.post(f"/jobs/{job_id}/cancel")
    assert response.status_code == 409, response.text
    assert system.snapshot() == before


@pytest.mark.parametrize("delay_s", [3600, None])
def test_replay__job_not_dead_lettered_is_409(system: System, delay_s: int | None) -> None:
    job_id = system.submit(type="echo", delay_s=delay_s or 3600)
    if delay_s is None:
        assert system.client.post(f"/jobs/{job_id}/cancel").status_code == 200
    before = system.snapshot()
    response = system.client.post(f"/dlq/{job_id}/replay")
    assert response.status_code == 409, response.text
    assert response.json()["error"]
    assert system.snapshot() == before


def test_replay__unknown_job_is_404(system: System) -> None:
    before = system.snapshot()
    for job_id in [UNKNOWN_JOB, "nope", "x" * 300, "%00", "..%2Fjobs"]:
        response = system.client.post(f"/dlq/{job_id}/replay")
        assert response.status_code == 404, response.text
        assert response.json()["error"] in ("job_not_found", "not_found")
    assert system.snapshot() == before
