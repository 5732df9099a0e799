"""Unicode oddities, huge numbers and odd encodings: a clear answer on both backends.

Strings that SQLite stores as given but MariaDB may not (4-byte UTF-8, NUL bytes, lone
surrogates, case- or accent-insensitive collations) are either stored and read back exactly,
or refused with a 4xx and nothing written: never a 500, never a silent change. Each test
sends many cases to one System (one schema per test keeps the MariaDB run short).
"""

from __future__ import annotations

from typing import Any

from orchestrator.gpu import SimulatedProbe
from tests.integration.harness import System

JSON = {"content-type": "application/json"}

# Strings a job may carry in its payload and read back exactly.
ODD_STRINGS = [
    "emoji \U0001f680\U0001f9ea",  # 4-byte UTF-8 (utf8mb4 on MariaDB)
    "nul \x00 byte",
    "rtl \u202e mark \u200f and zero width \u200b",
    "combining e\u0301 vs \u00e9",
    "x" * 100_000,
]


def _refused(system: System, method: str, path: str, status: int = 422, **request: Any) -> None:
    """The request gets `status` (any 4xx when 0) in the house error format, and nothing is
    written."""
    before = system.snapshot()
    response = system.client.request(method, path, **request)
    if status:
        assert response.status_code == status, (path, request, response.text)
    else:
        assert 400 <= response.status_code < 500, (path, request, response.text)
    error = response.json()
    assert error["error"] and error["message"], error
    assert system.snapshot() == before, (path, request)


def test_submit__odd_strings_in_payload_and_big_integers_round_trip(system: System) -> None:
    for text in ODD_STRINGS:
        payload = {"text": text, text[:50]: 1}
        assert system.job(system.submit(type="echo", payload=payload))["payload"] == payload
    # JSON has no integer limit and the payload is stored as text: kept exactly.
    big = {"n": 10**40, "m": -(10**40)}
    assert system.job(system.submit(type="echo", payload=big))["payload"] == big


def test_submit__idempotency_keys_differing_in_case_accent_or_space_are_distinct(
    system: System,
) -> None:
    # MariaDB's default collation would call these equal (ExactString in store/tables.py).
    keys = ["req-1", "REQ-1", "req-1 ", "r\u00e9q-1", "req-1\U0001f680", "req-\x001"]
    ids = [system.submit(type="echo", idempotency_key=k) for k in keys]
    assert len(set(ids)) == len(keys)
    for key, job_id in zip(keys, ids, strict=True):
        assert system.job(job_id)["idempotency_key"] == key


def test_submit__lone_surrogates_and_odd_types_rejected(system: System) -> None:
    for raw in [
        rb'{"type": "echo", "payload": "\ud800"}',  # a lone surrogate, as a JSON escape
        rb'{"type": "echo", "payload": {"\udfff": 1}}',
        rb'{"type": "echo", "idempotency_key": "k\ud800"}',
    ]:
        _refused(system, "POST", "/jobs/submit", content=raw, headers=JSON)
    for body in [
        {"type": "echo\U0001f680"},
        {"type": "\u0435cho"},  # a Cyrillic "e"
        {"type": "echo\x00"},
        {"type": "echo\u202e"},
        {"type": "echo", "priority": "normal\x00"},
    ]:
        _refused(system, "POST", "/jobs/submit", json=body)


def test_submit__huge_and_non_finite_numbers_rejected(system: System) -> None:
    for raw in [
        b'{"type": "echo", "max_attempts": 100000000000000000000000000000}',
        b'{"type": "echo", "delay_s": 1e309}',
        b'{"type": "echo", "timeout_s": 1e308}',
        b'{"type": "echo", "delay_s": NaN}',
        b'{"type": "echo", "timeout_s": Infinity}',
        b'{"type": "echo", "gpu": {"est_vram_mb": 100000000000000000000000000000}}',
        b'{"type": "echo", "gpu": {"est_vram_mb": 1.5}}',
        b'{"type": "echo", "gpu": {"est_vram_mb": 1024, "gpu_count": -1}}',
        b'{"type": "echo", "payload": 1e309}',
        b'{"type": "echo", "run_at": "10000-01-01T00:00:00Z"}',
        b'{"type": "echo", "run_at": 1e20}',
    ]:
        _refused(system, "POST", "/jobs/submit", content=raw, headers=JSON)
        batch = b'{"jobs": [' + raw + b"]}"
        _refused(system, "POST", "/jobs/submit_batch", content=batch, headers=JSON)


def test_post__empty_or_malformed_body_rejected(system: System) -> None:
    bodies = [
        b"",
        b"   ",
        b"null",
        b'"echo"',
        b"\xff\xfe{}",  # not UTF-8
        b'{"type": "echo"} trailing',
        b"\xef\xbb\xbf" + b'{"type": "echo"',
    ]
    for path in ["/jobs/submit", "/jobs/submit_batch", "/pools", "/leases", "/policy"]:
        for raw in bodies:
            _refused(system, "POST", path, content=raw, headers=JSON)


def test_submit__wrong_content_type_rejected(system: System) -> None:
    for content_type in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]:
        headers = {"content-type": content_type}
        _refused(system, "POST", "/jobs/submit", 0, content=b'{"type": "echo"}', headers=headers)
    _refused(system, "POST", "/jobs/submit", 0, content=b'{"type": "echo"}')


def test_odd_path_parameters_are_clean_4xx(system: System) -> None:
    for path in [
        "/jobs/%00",
        "/jobs/..%2F..%2Fetc%2Fpasswd",
        "/jobs/%2e%2e",
        "/jobs/%F0%9F%9A%80",
        "/jobs/%ED%A0%80",  # an encoded lone surrogate
        "/jobs/%FF",
        "/leases/%00",
        "/leases/%2E%2E",
        "/pools/%00",
        "/pools/..%2Fetc",
        "/models/%00",
    ]:
        _refused(system, "GET", path, 0)
    for path in [
        "/jobs/%00/cancel",
        "/dlq/%00/replay",
        "/leases/%00/heartbeat",
        "/pools/%00/drain",
    ]:
        _refused(system, "POST", path, 0)


def test_list__odd_query_parameters(system: System) -> None:
    for params in [
        {"limit": "1e3"},
        {"limit": "-1"},
        {"cursor": "\x00"},
        {"cursor": "01a2081d-9d5a-70e5-b9fb-d1caae1f9b91\x00"},
        {"type": "echo\x00"},
        {"status": "done\x00"},
    ]:
        _refused(system, "GET", "/jobs", params=params)
    # A huge page size is capped at ORCH_MAX_PAGE_SIZE, not refused.
    assert system.client.get("/jobs", params={"limit": str(10**30)}).status_code == 200


def test_lease__control_characters_and_surrogates_in_names_refused(system: System) -> None:
    for raw in [
        rb'{"agent": "a\u0000", "est_vram_mb": 10}',
        rb'{"agent": "a\nINFO forged log line", "est_vram_mb": 10}',
        rb'{"agent": "a", "operation": "\u001b[2J", "est_vram_mb": 10}',
        rb'{"agent": "a\ud800", "est_vram_mb": 10}',
        rb'{"agent": "a", "node": "n\udfff", "est_vram_mb": 10}',
    ]:
        _refused(system, "POST", "/leases", content=raw, headers=JSON)


def test_lease__emoji_and_rtl_names_are_kept_exactly(system: System) -> None:
    reading = SimulatedProbe([24576]).read()
    node = system.settings.resolved_node_name()
    system.store.report_node(node, reading, system.services.clock.now(), 90.0)
    body = {"agent": "team-\U0001f680", "operation": "\u05e9\u05dc\u05d5\u05dd", "est_vram_mb": 10}
    response = system.client.post("/leases", json=body)
    assert response.status_code == 201, response.text
    lease = system.client.get(f"/leases/{response.json()['token']}").json()
    assert (lease["agent"], lease["operation"]) == (body["agent"], body["operation"])


def test_pools__model_id_that_no_preload_could_warm_is_refused(system: System) -> None:
    for model_id in ["m\U0001f680", "../etc", "a//b", " m"]:
        body = {"name": "p1", "job_types": ["echo"], "model_id": model_id}
        _refused(system, "POST", "/pools", json=body)


def test_agents__control_characters_in_register_and_evict_refused(system: System) -> None:
    # C0, DEL and C1 (category Cc, as the names of leases): these are logged and tabled.
    good = {"agent": "a1", "version": "1.0 beta \u00e9", "capabilities": ["text gen"]}
    assert system.client.post("/agents/register", json=good).status_code == 200
    for raw in [
        rb'{"agent": "a\u007f", "version": "1"}',
        rb'{"agent": "a\u0085", "version": "1"}',
        rb'{"agent": "a1", "version": "1\nINFO forged log line"}',
        rb'{"agent": "a1", "version": "1\u009b2J"}',
        rb'{"agent": "a1", "version": "\u001b[2J"}',
        rb'{"agent": "a1", "version": "1", "capabilities": ["gen\u0000"]}',
        rb'{"agent": "a1", "version": "1", "capabilities": ["ok", "x\u0090"]}',
    ]:
        _refused(system, "POST", "/agents/register", content=raw, headers=JSON)
    (agent,) = system.client.get("/agents").json()["agents"]
    assert (agent["version"], agent["capabilities"]) == (good["version"], good["capabilities"])
    for raw in [
        rb'{"model_id": "m", "node": "n\u0000"}',
        rb'{"model_id": "m", "node": "n\u007f"}',
        rb'{"model_id": "m", "node": "n\u009f"}',
        rb'{"model_id": "m", "node": "n\r\nx"}',
    ]:
        _refused(system, "POST", "/models/evict", status=422, content=raw, headers=JSON)
