"""The client SDK against a fake API (httpx.MockTransport): no network, no long sleeps."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from orchestrator.client import (
    ApiError,
    GpuLease,
    LeaseDenied,
    OrchestratorClient,
    Unreachable,
    WaitTimeout,
)

Handler = Callable[[httpx.Request], httpx.Response]

LEASE = {
    "token": "tok-1",
    "agent": "agent-a",
    "status": "active",
    "node": "node-1",
    "devices": [0, 1],
    "est_vram_mb": 1000,
    "gpu_count": 2,
    "ttl_s": 0.15,
    "expires_at": "2026-01-01T12:00:00.5Z",
}


class FakeApi:
    """Routes requests to per-(method, path) answers and records every request."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], Handler] = {}
        self.requests: list[httpx.Request] = []
        self.lock = threading.Lock()
        self.heartbeats = threading.Semaphore(0)

    def on(self, method: str, path: str, handler: Handler) -> None:
        self.routes[(method, path)] = handler

    def answer(self, method: str, path: str, status: int, body: Any) -> None:
        self.on(method, path, lambda _r: httpx.Response(status, json=body))

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.requests.append(request)
        handler = self.routes.get((request.method, request.url.path))
        if handler is None:
            return httpx.Response(404, json={"error": "not_found", "message": "Not Found"})
        return handler(request)

    def sent(self, method: str, path: str) -> list[Any]:
        with self.lock:
            return [
                json.loads(r.content) if r.content else None
                for r in self.requests
                if r.method == method and r.url.path == path
            ]

    def lease_routes(self, heartbeat_status: int = 200) -> None:
        self.answer("POST", "/leases", 201, LEASE)

        def heartbeat(_request: httpx.Request) -> httpx.Response:
            self.heartbeats.release()
            if heartbeat_status != 200:
                return httpx.Response(heartbeat_status, json={"error": "lease_expired"})
            return httpx.Response(200, json={**LEASE, "expires_at": "2026-01-01T12:00:09Z"})

        self.on("POST", "/leases/tok-1/heartbeat", heartbeat)
        self.answer("POST", "/leases/tok-1/release", 200, {**LEASE, "status": "released"})

    def wait_heartbeats(self, count: int) -> None:
        for _ in range(count):
            assert self.heartbeats.acquire(timeout=2), "no heartbeat came"


@pytest.fixture
def api() -> FakeApi:
    return FakeApi()


@pytest.fixture
def client(api: FakeApi) -> OrchestratorClient:
    return OrchestratorClient(
        "http://orch.test", token="s3cret", transport=httpx.MockTransport(api)
    )


def failing(exc: Exception) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    return httpx.MockTransport(handler)


# -- jobs ------------------------------------------------------------------------------------


def test_submit__sends_only_given_fields_with_token(
    api: FakeApi, client: OrchestratorClient
) -> None:
    api.answer("POST", "/jobs/submit", 202, {"job_id": "j-1", "status": "pending"})

    job_id = client.submit("echo", {"x": 1}, priority="high", gpu={"est_vram_mb": 512})

    assert job_id == "j-1"
    assert api.sent("POST", "/jobs/submit") == [
        {"type": "echo", "payload": {"x": 1}, "priority": "high", "gpu": {"est_vram_mb": 512}}
    ]
    assert api.requests[0].headers["authorization"] == "Bearer s3cret"
    assert api.requests[0].headers["user-agent"].startswith("gpu-orchestrator-client/")


def test_client__without_token_sends_no_authorization(api: FakeApi) -> None:
    api.answer("GET", "/jobs/j-1", 200, {"id": "j-1", "status": "done"})
    with OrchestratorClient("http://orch.test/", transport=httpx.MockTransport(api)) as client:
        assert client.get("j-1")["status"] == "done"
    assert "authorization" not in api.requests[0].headers
    assert str(api.requests[0].url) == "http://orch.test/jobs/j-1"


def test_client__base_url_defaults_to_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCH_API_URL", "http://elsewhere:9000")
    with OrchestratorClient() as client:
        assert client.base_url == "http://elsewhere:9000"


def test_submit_batch__returns_ids_in_order(api: FakeApi, client: OrchestratorClient) -> None:
    items = [{"job_id": "a", "status": "pending", "created": True}]
    items.append({"job_id": "b", "status": "done", "created": False})
    api.answer("POST", "/jobs/submit_batch", 202, {"jobs": items})

    ids = client.submit_batch([{"type": "echo"}, {"type": "sleep", "delay_s": 5, "run_at": None}])

    assert ids == ["a", "b"]
    assert api.sent("POST", "/jobs/submit_batch") == [
        {"jobs": [{"type": "echo"}, {"type": "sleep", "delay_s": 5}]}
    ]


def test_get__unknown_job_raises_api_error(api: FakeApi, client: OrchestratorClient) -> None:
    body = {"error": "job_not_found", "message": "no job j-9", "details": {"job_id": "j-9"}}
    api.answer("GET", "/jobs/j-9", 404, body)

    with pytest.raises(ApiError) as caught:
        client.get("j-9")

    assert (caught.value.status, caught.value.code) == (404, "job_not_found")
    assert caught.value.message == "no job j-9"
    assert caught.value.details == {"job_id": "j-9"}
    assert caught.value.body == body
    assert str(caught.value) == "404 job_not_found: no job j-9"


def test_call__answer_that_is_not_json_raises_api_error(
    api: FakeApi, client: OrchestratorClient
) -> None:
    api.on("GET", "/jobs/j-1", lambda _r: httpx.Response(502, text="<html>Bad Gateway</html>"))

    with pytest.raises(ApiError) as caught:
        client.get("j-1")

    assert (caught.value.status, caught.value.code, caught.value.body) == (502, "http_error", None)
    assert "Bad Gateway" in caught.value.message


def test_call__connect_error_raises_unreachable() -> None:
    transport = failing(httpx.ConnectError("connection refused"))
    with (
        OrchestratorClient("http://orch.test", transport=transport) as client,
        pytest.raises(Unreachable) as caught,
    ):
        client.submit("echo")
    assert caught.value.url == "http://orch.test"
    assert "connection refused" in caught.value.message
    assert isinstance(caught.value.__cause__, httpx.ConnectError)


def test_call__read_timeout_raises_unreachable() -> None:
    transport = failing(httpx.ReadTimeout("timed out"))
    with (
        OrchestratorClient("http://orch.test", transport=transport) as client,
        pytest.raises(Unreachable, match="did not answer"),
    ):
        client.get("j-1")


def test_cancel__running_job_returns_it(api: FakeApi, client: OrchestratorClient) -> None:
    api.answer("POST", "/jobs/j-1/cancel", 202, {"id": "j-1", "cancel_requested": True})
    assert client.cancel("j-1")["cancel_requested"] is True


def test_events__returns_the_list(api: FakeApi, client: OrchestratorClient) -> None:
    api.answer("GET", "/jobs/j-1/events", 200, {"job_id": "j-1", "events": [{"id": 1}]})
    assert client.events("j-1") == [{"id": 1}]


def sequence(api: FakeApi, states: list[dict[str, Any]]) -> None:
    """GET /jobs/j-1 answers each state in turn, then the last one forever."""
    left = list(states)

    def answer(_request: httpx.Request) -> httpx.Response:
        state = left.pop(0) if len(left) > 1 else left[0]
        return httpx.Response(200, json={"id": "j-1", **state})

    api.on("GET", "/jobs/j-1", answer)


def test_wait__reports_changes_only_and_returns_the_finished_job(
    api: FakeApi, client: OrchestratorClient
) -> None:
    sequence(
        api,
        [
            {"status": "pending", "progress": None},
            {"status": "pending", "progress": None},
            {"status": "running", "progress": {"step": 1}},
            {"status": "running", "progress": {"step": 1}},
            {"status": "failed", "progress": {"step": 1}},
            {"status": "running", "progress": {"step": 2}},
            {"status": "done", "progress": {"step": 2}, "result": 42},
        ],
    )
    seen: list[tuple[str, Any]] = []

    job = client.wait(
        "j-1",
        timeout=5,
        poll_s=0.001,
        on_progress=lambda j: seen.append((j["status"], j["progress"])),
    )

    assert job["result"] == 42
    assert seen == [
        ("pending", None),
        ("running", {"step": 1}),
        ("failed", {"step": 1}),
        ("running", {"step": 2}),
        ("done", {"step": 2}),
    ]


def test_wait__times_out_with_the_last_state(api: FakeApi, client: OrchestratorClient) -> None:
    sequence(api, [{"status": "running", "progress": None}])

    with pytest.raises(WaitTimeout) as caught:
        client.wait("j-1", timeout=0.05, poll_s=0.01)

    assert caught.value.job is not None and caught.value.job["status"] == "running"
    assert "still running after 0.05s" in caught.value.message


# -- leases ----------------------------------------------------------------------------------


def test_gpu_lease__heartbeats_and_releases_with_peak(
    api: FakeApi, client: OrchestratorClient
) -> None:
    api.lease_routes()

    with client.gpu_lease("agent-a", 1000, gpu_count=2, ttl_s=0.15, operation="embed") as lease:
        assert (lease.token, lease.node, lease.devices, lease.cpu) == (
            "tok-1",
            "node-1",
            [0, 1],
            False,
        )
        assert lease.env()["CUDA_VISIBLE_DEVICES"] == "0,1"
        api.wait_heartbeats(1)
        lease.report_vram(700)
        lease.report_vram(300)
        api.wait_heartbeats(2)  # one of them, at least, went after the report
        assert lease.expires_at is not None and lease.expires_at.second == 9  # renewed

    requested = api.sent("POST", "/leases")[0]
    assert requested == {
        "agent": "agent-a",
        "operation": "embed",
        "est_vram_mb": 1000,
        "gpu_count": 2,
        "ttl_s": 0.15,
        "priority": "normal",
        "wait_s": 0.0,
    }
    beats = api.sent("POST", "/leases/tok-1/heartbeat")
    assert beats[0] == {} and beats[-1] == {"used_vram_mb": 300}
    assert api.sent("POST", "/leases/tok-1/release") == [{"peak_vram_mb": 700, "success": True}]
    assert lease.info["status"] == "released" and not lease.lost
    count = len(api.sent("POST", "/leases/tok-1/heartbeat"))
    threading.Event().wait(0.2)
    assert len(api.sent("POST", "/leases/tok-1/heartbeat")) == count, "beats after release"


def test_gpu_lease__block_raises__released_unsuccessful_and_propagates(
    api: FakeApi, client: OrchestratorClient
) -> None:
    api.lease_routes()

    with (
        pytest.raises(RuntimeError, match="CUDA out of memory"),
        client.gpu_lease("agent-a", 1000, ttl_s=30),
    ):
        raise RuntimeError("CUDA out of memory")

    assert api.sent("POST", "/leases/tok-1/release") == [{"peak_vram_mb": None, "success": False}]


def test_gpu_lease__release_fails__block_result_stands(
    api: FakeApi, client: OrchestratorClient, caplog: pytest.LogCaptureFixture
) -> None:
    api.lease_routes()
    api.answer("POST", "/leases/tok-1/release", 500, {"error": "internal_error", "message": "x"})

    with caplog.at_level(logging.WARNING), client.gpu_lease("agent-a", 1000, ttl_s=30):
        pass

    assert any(getattr(r, "event", "") == "lease_release_failed" for r in caplog.records)


@pytest.mark.parametrize("status", [408, 404, 409])
def test_gpu_lease__heartbeat_finds_lease_gone__lost_and_stops(
    api: FakeApi, client: OrchestratorClient, caplog: pytest.LogCaptureFixture, status: int
) -> None:
    api.lease_routes(heartbeat_status=status)

    with caplog.at_level(logging.WARNING), client.gpu_lease("agent-a", 1000, ttl_s=0.06) as lease:
        api.wait_heartbeats(1)
        for _ in range(100):
            if lease.lost:
                break
            threading.Event().wait(0.01)
        assert lease.lost
        threading.Event().wait(0.1)  # five intervals: none of them may beat again

    assert len(api.sent("POST", "/leases/tok-1/heartbeat")) == 1
    assert [r for r in caplog.records if getattr(r, "event", "") == "lease_lost"]


def test_gpu_lease__heartbeat_error_is_retried(
    api: FakeApi, client: OrchestratorClient, caplog: pytest.LogCaptureFixture
) -> None:
    api.lease_routes(heartbeat_status=503)

    with caplog.at_level(logging.WARNING), client.gpu_lease("agent-a", 1000, ttl_s=0.06) as lease:
        api.wait_heartbeats(3)

    assert not lease.lost
    assert [r for r in caplog.records if getattr(r, "event", "") == "lease_heartbeat_failed"]


def test_gpu_lease__request_timeout_covers_wait_s(api: FakeApi, client: OrchestratorClient) -> None:
    api.lease_routes()

    with client.gpu_lease("agent-a", 1000, ttl_s=30, wait_s=20, fallback="cpu"):
        pass
    with client.gpu_lease("agent-a", 1000, ttl_s=30, connect_timeout=1.5):
        pass

    timeouts = [r.extensions["timeout"] for r in api.requests if r.url.path == "/leases"]
    assert timeouts[0]["connect"] == 2.0 and timeouts[0]["read"] == 22.0
    # Without a fallback a slow answer is awaited (the client's timeout), not given up on.
    assert timeouts[1]["connect"] == 1.5 and timeouts[1]["read"] == 10.0


@pytest.mark.parametrize(
    "transport",
    [
        failing(httpx.ConnectError("connection refused")),
        failing(httpx.ConnectTimeout("timed out")),
        failing(httpx.ReadTimeout("timed out")),
        httpx.MockTransport(
            lambda _r: httpx.Response(
                503, json={"error": "unavailable", "message": "safe mode", "reason": "safe_mode"}
            )
        ),
    ],
    ids=["refused", "connect-timeout", "read-timeout", "503"],
)
def test_gpu_lease__fallback_cpu__yields_cpu_lease(
    transport: httpx.BaseTransport, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.WARNING),
        OrchestratorClient("http://orch.test", transport=transport) as client,
        client.gpu_lease("agent-a", 1000, fallback="cpu") as lease,
    ):
        assert lease.cpu and lease.token is None and lease.devices == []
        assert lease.env()["CUDA_VISIBLE_DEVICES"] == ""
        lease.report_vram(10)

    assert [r for r in caplog.records if getattr(r, "event", "") == "lease_cpu_fallback"]


def test_gpu_lease__unreachable_without_fallback_raises() -> None:
    transport = failing(httpx.ConnectError("connection refused"))
    with (
        OrchestratorClient("http://orch.test", transport=transport) as client,
        pytest.raises(Unreachable),
        client.gpu_lease("agent-a", 1000),
    ):
        raise AssertionError("the block must not run")


def test_gpu_lease__503_without_fallback_raises_api_error(api: FakeApi) -> None:
    api.answer("POST", "/leases", 503, {"error": "safe_mode", "message": "safe mode"})
    with (
        OrchestratorClient("http://orch.test", transport=httpx.MockTransport(api)) as client,
        pytest.raises(ApiError) as caught,
        client.gpu_lease("agent-a", 1000),
    ):
        raise AssertionError("the block must not run")
    assert caught.value.status == 503


def test_gpu_lease__denied_raises_even_with_fallback(
    api: FakeApi, client: OrchestratorClient
) -> None:
    denial = {
        "granted": False,
        "error": "lease_denied",
        "reason": "insufficient_vram",
        "estimated_wait_ms": 1500,
        "message": "no device has 1000 MB free",
    }
    api.answer("POST", "/leases", 409, denial)

    with pytest.raises(LeaseDenied) as caught, client.gpu_lease("agent-a", 1000, fallback="cpu"):
        raise AssertionError("the block must not run")

    assert caught.value.reason == "insufficient_vram"
    assert caught.value.estimated_wait_ms == 1500
    assert caught.value.status == 409
    assert not api.sent("POST", "/leases/tok-1/release")


def test_gpu_lease__invalid_request_raises_api_error(
    api: FakeApi, client: OrchestratorClient
) -> None:
    api.answer("POST", "/leases", 422, {"error": "invalid_request", "message": "est_vram_mb: >0"})
    with pytest.raises(ApiError) as caught, client.gpu_lease("agent-a", 0, fallback="cpu"):
        raise AssertionError("the block must not run")
    assert caught.value.code == "invalid_request"


def test_gpu_lease__module_function_uses_its_own_client_and_closes_it(
    api: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestrator import client as client_module

    api.lease_routes()
    made: list[OrchestratorClient] = []

    def make(base_url: str | None = None, **kwargs: Any) -> OrchestratorClient:
        made.append(OrchestratorClient(base_url, transport=httpx.MockTransport(api), **kwargs))
        return made[-1]

    monkeypatch.setenv("ORCH_API_URL", "http://from-settings:8014")
    monkeypatch.setattr(client_module, "OrchestratorClient", make)
    with client_module.gpu_lease("agent-a", 1000, token="t", ttl_s=30) as lease:
        assert lease.devices == [0, 1]

    assert made[0].base_url == "http://from-settings:8014"
    assert made[0]._http.is_closed
    assert api.sent("POST", "/leases/tok-1/release") == [{"peak_vram_mb": None, "success": True}]


def test_gpu_lease__unknown_fallback_is_refused(client: OrchestratorClient) -> None:
    with (
        pytest.raises(ValueError, match="fallback"),
        client.gpu_lease("agent-a", 1000, fallback="gpu"),  # type: ignore[arg-type]
    ):
        raise AssertionError("the block must not run")


def test_lease__report_vram_keeps_the_peak() -> None:
    lease = GpuLease(token="t", node="n", devices=[3])
    lease.report_vram(5)
    lease.report_vram(9)
    lease.report_vram(2)
    assert (lease.used_vram_mb, lease.peak_vram_mb) == (2, 9)
    assert lease.cuda_visible_devices == "3"
    with pytest.raises(ValueError):
        lease.report_vram(-1)
