"""The operator's input limits (settings) narrow what the API takes: over a limit is a 422
(or 413 for sizes) that names it, and nothing is written; at the limit is accepted."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from orchestrator.gpu import SimulatedProbe
from orchestrator.input_limits import MAX_BATCH_SIZE
from tests.integration.harness import System

LIMITS: dict[str, Any] = {
    "job_type_pattern": r"^(echo|inference_[a-z]+)$",
    "max_idempotency_key_length": 8,
    "max_name_length": 8,
    "max_delay_s": 60.0,
    "max_preload_models": 2,
    "max_batch_size": 3,
    "max_page_size": 2,
    "lease_max_ttl_s": 30.0,
    "lease_default_ttl_s": 10.0,
    "lease_max_wait_s": 0.5,
    "node_name": "n1",
}


@pytest.fixture
def limited(backend_factory: Any) -> Iterator[System]:
    system = System(backend_factory(**LIMITS), run_engine=False)
    reading = SimulatedProbe([24576]).read()
    system.store.report_node("n1", reading, system.services.clock.now(), 90.0)
    try:
        yield system
    finally:
        system.close()


def _refused(system: System, path: str, body: Any, limit: str, status: int = 422) -> None:
    before = system.snapshot()
    response = system.client.post(path, json=body)
    assert response.status_code == status, response.text
    error = response.json()
    assert error["error"] == "invalid_request"
    assert error["details"]["limit"] == limit, error
    assert system.snapshot() == before


def test_submit__over_a_configured_limit_is_refused(limited: System) -> None:
    for body, limit in [
        ({"type": "embed"}, "job_type_pattern"),
        ({"type": "inference_"}, "job_type_pattern"),
        ({"type": "echo", "idempotency_key": "k" * 9}, "max_idempotency_key_length"),
        ({"type": "echo", "delay_s": 61}, "max_delay_s"),
        ({"type": "echo", "run_at": "2999-01-01T00:00:00Z"}, "max_delay_s"),
    ]:
        _refused(limited, "/jobs/submit", body, limit)
        # One bad job in a batch refuses the whole batch.
        _refused(limited, "/jobs/submit_batch", {"jobs": [{"type": "echo"}, body]}, limit)


def test_submit__at_the_configured_limits_is_accepted(limited: System) -> None:
    for body in [
        {"type": "echo", "idempotency_key": "k" * 8, "delay_s": 60},
        {"type": "inference_jobs"},
        # The built-in preload type is always allowed (the product submits it itself).
        {"type": "preloads", "payload": {"model_id": "m"}},
    ]:
        response = limited.client.post("/jobs/submit", json=body)
        assert response.status_code == 202, response.text


def test_submit_batch__over_the_batch_size_is_refused(limited: System) -> None:
    before = limited.snapshot()
    response = limited.client.post("/jobs/submit_batch", json={"jobs": [{"type": "echo"}] * 4})
    assert response.status_code == 422, response.text
    assert limited.snapshot() == before


def test_pools__job_types_must_match_the_pattern(limited: System) -> None:
    body = {"name": "p1", "job_types": ["echo", "embed"]}
    _refused(limited, "/pools", body, "job_type_pattern")
    ok = limited.client.post("/pools", json={"name": "p1", "job_types": ["echo"]})
    assert ok.status_code == 201, ok.text


def test_preload__more_models_than_the_limit_is_refused(limited: System) -> None:
    _refused(limited, "/models/preload", {"models": ["a", "b", "c"]}, "max_preload_models")


def test_lease__names_over_the_limit_are_refused(limited: System) -> None:
    for body in [{"agent": "a" * 9}, {"agent": "a", "operation": "o" * 9}, {"node": "n" * 9}]:
        _refused(limited, "/leases", {"agent": "a", "est_vram_mb": 100, **body}, "max_name_length")


def test_lease__ttl_and_wait_out_of_range_are_refused(limited: System) -> None:
    before = limited.snapshot()
    for extra in [{"ttl_s": 31}, {"ttl_s": 0}, {"wait_s": 0.6}, {"wait_s": -1}, {"ttl_s": 10**30}]:
        response = limited.client.post("/leases", json={"agent": "a", "est_vram_mb": 100, **extra})
        assert response.status_code == 422, (extra, response.text)
        assert response.json()["error"] == "invalid_request"
    assert limited.snapshot() == before


def test_lease__within_the_limits_is_granted(limited: System) -> None:
    body = {"agent": "a" * 8, "operation": "o" * 8, "est_vram_mb": 100, "ttl_s": 30}
    response = limited.client.post("/leases", json=body)
    assert response.status_code == 201, response.text


def test_list__page_size_is_capped_at_the_limit(limited: System) -> None:
    limited.client.post("/jobs/submit_batch", json={"jobs": [{"type": "echo"}] * 3})
    for _ in range(3):
        lease = {"agent": "a", "est_vram_mb": 100, "ttl_s": 30}
        assert limited.client.post("/leases", json=lease).status_code == 201
    huge = {"limit": 10**6}
    jobs = limited.client.get("/jobs", params=huge).json()
    assert len(jobs["jobs"]) == LIMITS["max_page_size"] and jobs["next_cursor"]
    leases = limited.client.get("/leases", params=huge).json()
    assert len(leases["leases"]) == LIMITS["max_page_size"]
    for path in ["/dlq", "/workers"]:
        assert limited.client.get(path, params=huge).status_code == 200


def test_submit_batch__over_the_schema_bound_is_refused_before_any_job_is_read(
    system: System,
) -> None:
    # Jobs that are each invalid: had any been validated, the errors would name them.
    jobs = [{"type": 1}] * (MAX_BATCH_SIZE + 1)
    before = system.snapshot()
    response = system.client.post("/jobs/submit_batch", json={"jobs": jobs})
    assert response.status_code == 422, response.text
    details = response.json()["details"]
    assert [(d["loc"], d["type"]) for d in details] == [(["body", "jobs"], "too_long")], details[:3]
    assert system.snapshot() == before
