"""Bad input gets a clear 4xx JSON error, and nothing is written (DESIGN invariant 7)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.harness import System

BAD_SUBMITS: list[tuple[str, Any, int]] = [
    ("unknown field", {"type": "echo", "colour": "red"}, 422),
    ("missing type", {"payload": {}}, 422),
    ("type upper case", {"type": "Echo"}, 422),
    ("type with colon", {"type": "echo:dlq"}, 422),
    ("type too long", {"type": "a" * 65}, 422),
    ("type not a string", {"type": 7}, 422),
    ("priority unknown", {"type": "echo", "priority": "urgent"}, 422),
    ("max_attempts zero", {"type": "echo", "max_attempts": 0}, 422),
    ("max_attempts huge", {"type": "echo", "max_attempts": 10**30}, 422),
    ("max_attempts wrong type", {"type": "echo", "max_attempts": "five"}, 422),
    ("timeout negative", {"type": "echo", "timeout_s": -1}, 422),
    ("timeout over limit", {"type": "echo", "timeout_s": 10**9}, 422),
    ("run_at and delay_s", {"type": "echo", "run_at": "2030-01-01T00:00:00Z", "delay_s": 1}, 422),
    ("run_at not a time", {"type": "echo", "run_at": "tomorrow"}, 422),
    ("delay negative", {"type": "echo", "delay_s": -5}, 422),
    ("empty idempotency key", {"type": "echo", "idempotency_key": ""}, 422),
    ("idempotency key too long", {"type": "echo", "idempotency_key": "k" * 256}, 422),
    ("body is a list", [{"type": "echo"}], 422),
    ("payload too large", {"type": "echo", "payload": {"blob": "x" * 5000}}, 413),
    ("run_at out of range", {"type": "echo", "run_at": "9999-12-31T23:59:59-05:00"}, 422),
]


@pytest.fixture
def small_system(backend_factory: object) -> Any:
    system = System(backend_factory(max_payload_bytes=4096, max_request_bytes=64 * 1024))  # type: ignore[operator]
    yield system
    system.close()


@pytest.mark.parametrize(("case", "body", "status"), BAD_SUBMITS, ids=[c[0] for c in BAD_SUBMITS])
def test_submit__bad_input_rejected_and_nothing_written(
    small_system: System, case: str, body: Any, status: int
) -> None:
    before = small_system.snapshot()
    response = small_system.client.post("/jobs/submit", json=body)
    assert response.status_code == status, response.text
    error = response.json()
    assert error["error"] and error["message"]
    assert small_system.snapshot() == before


def test_submit__malformed_json_rejected(small_system: System) -> None:
    before = small_system.snapshot()
    response = small_system.client.post(
        "/jobs/submit", content=b'{"type": "echo",', headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["error"] == "invalid_request"
    assert response.json()["message"] == "the request body is not valid JSON"
    assert small_system.snapshot() == before


def test_submit__oversized_request_body_rejected_before_parsing(small_system: System) -> None:
    before = small_system.snapshot()
    body = b'{"type": "echo", "payload": "' + b"x" * (128 * 1024) + b'"}'
    response = small_system.client.post(
        "/jobs/submit", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"
    assert small_system.snapshot() == before


def test_submit_batch__empty_or_oversized_payload_rejected(small_system: System) -> None:
    before = small_system.snapshot()
    assert small_system.client.post("/jobs/submit_batch", json={"jobs": []}).status_code == 422
    big = {"jobs": [{"type": "echo"}, {"type": "echo", "payload": "y" * 5000}]}
    assert small_system.client.post("/jobs/submit_batch", json=big).status_code == 413
    assert small_system.snapshot() == before


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/jobs/{id}"),
        ("GET", "/jobs/{id}/events"),
        ("POST", "/jobs/{id}/cancel"),
    ],
)
def test_unknown_job_id__404_and_nothing_written(system: System, method: str, path: str) -> None:
    system.submit(type="echo")
    before = system.snapshot()
    for job_id in ["01a2081d-9d5a-70e5-b9fb-d1caae1f9b91", "not-a-job", "x" * 300]:
        response = system.client.request(method, path.format(id=job_id))
        assert response.status_code == 404, response.text
        assert response.json()["error"] in ("job_not_found", "not_found")
    assert system.snapshot() == before


@pytest.mark.parametrize(
    "params",
    [
        {"status": "sleeping"},
        {"type": "Bad Type"},
        {"limit": 0},
        {"limit": "many"},
        {"cursor": "c" * 65},
        {"cursor": "nonsense"},
    ],
)
def test_list__bad_query_rejected(system: System, params: dict[str, Any]) -> None:
    response = system.client.get("/jobs", params=params)
    assert response.status_code == 422
    assert response.json()["error"] == "invalid_request"


def test_unknown_route_and_method_are_json(system: System) -> None:
    missing = system.client.get("/nope")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    wrong = system.client.delete("/jobs/submit")
    assert wrong.status_code == 405 and wrong.json()["error"] == "method_not_allowed"


def test_submit__oversized_chunked_body_rejected(small_system: System) -> None:
    before = small_system.snapshot()

    def chunks():  # type: ignore[no-untyped-def]
        yield b'{"type": "echo", "payload": "'
        for _ in range(20):
            yield b"x" * 8192
        yield b'"}'

    response = small_system.client.post(
        "/jobs/submit", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"
    assert small_system.snapshot() == before


def test_submit__small_chunked_body_accepted(small_system: System) -> None:
    def chunks():  # type: ignore[no-untyped-def]
        yield b'{"type": "echo", '
        yield b'"payload": {"ok": true}}'

    response = small_system.client.post(
        "/jobs/submit", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 202
    assert small_system.job(response.json()["job_id"])["payload"] == {"ok": True}


@pytest.mark.parametrize("payload", [b"NaN", b"Infinity", b"[-Infinity]", b'{"x": NaN}'])
def test_submit__non_finite_numbers_rejected(small_system: System, payload: bytes) -> None:
    before = small_system.snapshot()
    body = b'{"type": "echo", "payload": ' + payload + b"}"
    for path, content in [
        ("/jobs/submit", body),
        ("/jobs/submit_batch", b'{"jobs": [' + body + b"]}"),
    ]:
        response = small_system.client.post(
            path, content=content, headers={"content-type": "application/json"}
        )
        assert response.status_code == 422, response.text
        assert response.json()["error"] == "invalid_request"
    assert small_system.snapshot() == before
