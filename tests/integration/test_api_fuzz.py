"""Schemathesis against the app's own OpenAPI schema, on both backends (DESIGN invariant 7).

Every operation gets a bounded number of generated requests, valid and invalid, from a fixed
seed (derandomized), so a run is deterministic. Checks: no 5xx anywhere; a 2xx answer
conforms to its schema; and a rejected request (4xx) leaves every table and stream exactly
as it was. Runs open (no tokens): the caller is an admin, so every operation is reachable.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from orchestrator.gpu import SimulatedProbe
from tests.integration.harness import System

# Examples per operation and generation mode: enough to reach each field's edges (the
# schema's bounds, wrong types, missing fields) while a backend's run stays in seconds.
# ORCH_TEST_FUZZ_EXAMPLES runs a deeper search (same seed, more cases).
EXAMPLES = int(os.environ.get("ORCH_TEST_FUZZ_EXAMPLES", "12"))

# Lease waits and the lease sweep are bounded so no request blocks the run: a `/leases`
# request may queue for at most this long (0 is also valid input: answer at once).
FUZZ_SETTINGS: dict[str, Any] = {"lease_max_wait_s": 0.05, "node_name": "n1"}


@pytest.fixture
def fuzz_system(backend_factory: Any) -> Iterator[System]:
    # The engine's loops stay off: they write as time passes, and a rejected request must be
    # seen to change nothing at all, row contents included.
    system = System(backend_factory(**FUZZ_SETTINGS), run_engine=False)
    # Two cards, so lease requests can be granted (and then fail on a later conflict).
    reading = SimulatedProbe([24576, 24576]).read()
    system.store.report_node("n1", reading, system.services.clock.now(), 90.0)
    try:
        yield system
    finally:
        system.close()


def _operations(system: System) -> list[Any]:
    schema = schemathesis.openapi.from_dict(system.client.app.openapi())  # type: ignore[attr-defined]
    return [result.ok() for result in schema.get_all_operations()]


def _send(system: System, case: Any) -> Any:
    kwargs = case.as_transport_kwargs(base_url="http://testserver")
    data = kwargs.pop("data", None)
    request: dict[str, Any] = {
        "method": kwargs.pop("method"),
        "url": kwargs.pop("url"),
        "params": kwargs.pop("params", None),
        "headers": kwargs.pop("headers", None),
    }
    # The API takes no cookies; per-request cookies are deprecated in httpx (a -W error).
    if cookies := kwargs.pop("cookies", None):
        request["headers"] = {
            **(request["headers"] or {}),
            "Cookie": "; ".join(f"{k}={v}" for k, v in cookies.items()),
        }
    if "json" in kwargs:
        request["json"] = kwargs.pop("json")
    elif isinstance(data, (bytes, str)):
        request["content"] = data
    elif data is not None:
        request["data"] = data
    return system.client.request(**request)


def _waited(label: str, body: Any) -> bool:
    """A lease request that queued (valid, wait_s > 0) and was not granted in time: its
    row stays as the record that it waited and timed out, and serving the queue meanwhile
    may have granted others. An answer to a valid request, not a rejection."""
    return label == "POST /leases" and body.get("reason") == "wait_timeout"


def _is_json(response: Any) -> bool:
    return str(response.headers.get("content-type", "")).startswith("application/json")


def _fuzz(system: System, operation: Any, seen: dict[str, set[int]]) -> None:
    label = operation.label
    strategy = st.one_of(
        operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
        operation.as_strategy(generation_mode=GenerationMode.NEGATIVE),
    )

    @settings(
        max_examples=2 * EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: Any) -> None:
        before = system.snapshot(contents=True)
        response = _send(system, case)
        seen.setdefault(label, set()).add(response.status_code)
        status = response.status_code
        # 503 is an answer, not a crash, where the operation documents it (not ready, no GPU
        # can take a lease): status_code_conformance below holds it to the schema.
        assert status < 500 or status == 503, f"{label}: {status} {response.text[:500]}"
        if status >= 400:
            assert _is_json(response), f"{label}: {response.status_code} is not JSON"
            body = response.json()
            assert body.get("error") and "message" in body, f"{label}: {response.text}"
            if not _waited(label, body):
                after = system.snapshot(contents=True)
                assert after == before, f"{label}: {status} wrote something"
        checks = [not_a_server_error] if status != 503 else []
        # The dashboard's page and assets (HTML, JS) have no body schema to conform to.
        if _is_json(response):
            checks.append(status_code_conformance)
            if status < 400:
                checks.append(response_schema_conformance)
        if checks:  # (an empty list would mean schemathesis's default set)
            case.validate_response(response, checks=checks)

    run()


# Hundreds of requests, each between two snapshots of every table and stream: about 100 s
# on MariaDB on a quiet 2-core machine, so the suite's 120 s per test is too tight here.
@pytest.mark.timeout(600)
def test_api_fuzz__no_server_errors_and_rejections_write_nothing(fuzz_system: System) -> None:
    operations = _operations(fuzz_system)
    assert len(operations) > 20, "the schema lost operations"
    seen: dict[str, set[int]] = {}
    for operation in operations:
        _fuzz(fuzz_system, operation, seen)
    # Every operation was called.
    assert set(seen) == {op.label for op in operations}
