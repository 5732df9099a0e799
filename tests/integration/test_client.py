"""The client SDK against a live server (uvicorn on a free port) with an in-process worker,
on both backends; and against ports where no orchestrator answers."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import uvicorn

from orchestrator.client import (
    ApiError,
    LeaseDenied,
    OrchestratorClient,
    Unreachable,
    WaitTimeout,
    gpu_lease,
)
from orchestrator.gpu import SimulatedProbe
from tests.integration.backends import Backend
from tests.integration.harness import System, wait_until

DEVICE_MB = 24576


@contextmanager
def serving(system: System) -> Iterator[OrchestratorClient]:
    """A client of `system`'s app, served by uvicorn in a thread on a free 127.0.0.1 port.

    The app's lifespan (the engine) already runs under `system.client`, so uvicorn serves
    the same app with its lifespan off.
    """
    config = uvicorn.Config(
        system.client.app, host="127.0.0.1", port=0, lifespan="off", log_config=None
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started or not thread.is_alive(), 10, "uvicorn to start")
        assert server.started, "uvicorn did not start"
        port = server.servers[0].sockets[0].getsockname()[1]
        with OrchestratorClient(f"http://127.0.0.1:{port}") as orch:
            yield orch
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def client(system: System) -> Iterator[OrchestratorClient]:
    with serving(system) as orch:
        yield orch


def seed_gpus(system: System, sizes_mb: list[int] | None = None) -> None:
    """Report simulated devices for this node, as a worker's telemetry would."""
    system.store.report_node(
        system.settings.resolved_node_name(),
        SimulatedProbe(sizes_mb or [DEVICE_MB, DEVICE_MB]).read(),
        system.services.clock.now(),
        system.settings.gpu_temp_limit_c,
    )


def active_tokens(orch: OrchestratorClient) -> set[str]:
    return {lease["token"] for lease in orch.leases()}


def dead_port() -> int:
    """A port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- jobs ------------------------------------------------------------------------------------


def test_client__submit_and_wait_with_progress(system: System, client: OrchestratorClient) -> None:
    system.start_worker()
    seen: list[dict[str, Any]] = []

    job_id = client.submit("sleep", {"seconds": 1.5}, priority="high")
    job = client.wait(job_id, timeout=20, on_progress=seen.append, poll_s=0.05)

    assert job["status"] == "done" and job["result"] == {"slept_s": 1.5}
    progress = [j["progress"] for j in seen if j["status"] == "running" and j["progress"]]
    assert {"slept_s": 1.0, "total_s": 1.5} in progress
    assert seen[-1]["status"] == "done"
    assert client.events(job_id)[0]["event"] == "submitted"
    assert client.get(job_id)["priority"] == "high"


def test_client__submit_batch_and_idempotent_retry(
    system: System, client: OrchestratorClient
) -> None:
    system.start_worker()
    ids = client.submit_batch([{"type": "echo", "payload": {"n": 1}}, {"type": "echo"}])
    again = client.submit("echo", {"n": 2}, idempotency_key="client-k1")

    assert client.submit("echo", {"n": 2}, idempotency_key="client-k1") == again
    assert len(set(ids)) == 2
    for job_id in [*ids, again]:
        assert client.wait(job_id, timeout=20, poll_s=0.05)["status"] == "done"
    assert client.get(ids[0])["result"] == {"n": 1}


def test_client__cancel_waiting_and_running_jobs(
    system: System, client: OrchestratorClient
) -> None:
    system.start_worker()
    later = client.submit("echo", delay_s=3600)
    running = client.submit("sleep", {"seconds": 30})

    assert client.cancel(later)["status"] == "cancelled"
    wait_until(lambda: client.get(running)["status"] == "running", 20, "the sleep to start")
    assert client.cancel(running)["cancel_requested"] is True
    assert client.wait(running, timeout=20, poll_s=0.05)["status"] == "cancelled"
    with pytest.raises(ApiError) as caught:
        client.cancel(later)
    assert (caught.value.status, caught.value.code) == (409, "job_finished")
    assert caught.value.details == {"status": "cancelled"}


def test_client__errors_from_the_api(system: System, client: OrchestratorClient) -> None:
    before = system.snapshot()
    with pytest.raises(ApiError) as missing:
        client.get("01a20822-7a5b-7649-abb1-a41a6a55e629")
    with pytest.raises(ApiError) as invalid:
        client.submit("Not A Type")

    assert (missing.value.status, missing.value.code) == (404, "job_not_found")
    assert (invalid.value.status, invalid.value.code) == (422, "invalid_request")
    assert invalid.value.message.startswith("type:")
    assert system.snapshot() == before


def test_client__wait_times_out_on_a_delayed_job(client: OrchestratorClient) -> None:
    job_id = client.submit("echo", delay_s=3600)
    started = time.monotonic()
    with pytest.raises(WaitTimeout) as caught:
        client.wait(job_id, timeout=0.3, poll_s=0.05)
    assert time.monotonic() - started < 2
    assert caught.value.job is not None and caught.value.job["status"] == "pending"


# -- GPU leases ------------------------------------------------------------------------------


def test_gpu_lease__granted_heartbeated_past_ttl_and_released(
    system: System, client: OrchestratorClient
) -> None:
    seed_gpus(system)

    with client.gpu_lease("agent-a", 4000, ttl_s=1.0, operation="embed") as lease:
        assert not lease.cpu and lease.token
        assert lease.node == system.settings.resolved_node_name()
        assert len(lease.devices) == 1 and lease.devices[0] in (0, 1)
        assert lease.env()["CUDA_VISIBLE_DEVICES"] == str(lease.devices[0])
        lease.report_vram(3000)
        time.sleep(2.5)  # past two ttls: only heartbeats keep it alive
        assert not lease.lost
        assert lease.token in active_tokens(client)
        lease.report_vram(3500)

    assert lease.token not in active_tokens(client)
    assert lease.info["status"] == "released"
    assert lease.info.get("peak_vram_mb") == 3500
    assert lease.info.get("success") is True


def test_gpu_lease__released_unsuccessful_when_the_block_raises(
    system: System, client: OrchestratorClient
) -> None:
    seed_gpus(system)

    with pytest.raises(RuntimeError, match="boom"), client.gpu_lease("agent-b", 4000) as lease:
        assert lease.token in active_tokens(client)
        raise RuntimeError("boom")

    assert lease.token not in active_tokens(client)
    assert lease.info["status"] == "released" and lease.info.get("success") is False


def test_gpu_lease__two_devices_gang(system: System, client: OrchestratorClient) -> None:
    seed_gpus(system)

    with client.gpu_lease("agent-c", 1000, gpu_count=2) as lease:
        assert sorted(lease.devices) == [0, 1]
        assert lease.env()["CUDA_VISIBLE_DEVICES"] in ("0,1", "1,0")


def test_gpu_lease__denied_with_a_reason(system: System, client: OrchestratorClient) -> None:
    seed_gpus(system, [DEVICE_MB])

    with pytest.raises(LeaseDenied) as too_big, client.gpu_lease("agent-d", DEVICE_MB * 2):
        raise AssertionError("the block must not run")
    with (
        client.gpu_lease("agent-d", DEVICE_MB // 2),
        pytest.raises(LeaseDenied) as full,
        client.gpu_lease("agent-e", DEVICE_MB // 2, fallback="cpu"),
    ):
        raise AssertionError("the block must not run")

    assert too_big.value.status == 409 and too_big.value.reason == "exceeds_capacity"
    assert full.value.reason == "insufficient_vram"
    assert client.leases() == []


def test_gpu_lease__queued_request_outlasts_the_connect_timeout(
    system: System, client: OrchestratorClient
) -> None:
    seed_gpus(system, [DEVICE_MB])
    got: list[Any] = []

    def queued() -> None:
        with client.gpu_lease(
            "agent-q", DEVICE_MB // 2, wait_s=10, fallback="cpu", connect_timeout=0.5
        ) as lease:
            got.append(lease)

    with client.gpu_lease("agent-p", DEVICE_MB // 2 + 1024):
        waiter = threading.Thread(target=queued)
        waiter.start()
        time.sleep(1.5)  # three connect timeouts: the request must still be waiting
        assert not got
    waiter.join(15)

    assert len(got) == 1 and not got[0].cpu, "the queued request was cut off"
    assert got[0].devices == [0]


def test_gpu_lease__released_by_someone_else__lost(
    system: System, client: OrchestratorClient
) -> None:
    seed_gpus(system)

    with client.gpu_lease("agent-l", 1000, ttl_s=0.6) as lease:
        response = system.client.post(f"/leases/{lease.token}/release", json={})
        assert response.status_code == 200, response.text
        wait_until(lambda: lease.lost, 5, "the heartbeat to find the lease released")

    assert client.leases() == []


def test_gpu_lease__module_function_against_a_live_server(
    system: System, client: OrchestratorClient
) -> None:
    seed_gpus(system)

    with gpu_lease("agent-m", 1000, base_url=client.base_url, model_id="m-1") as lease:
        (held,) = client.leases()
        assert held["token"] == lease.token and held["model_id"] == "m-1"

    assert client.leases() == []


def test_gpu_lease__safe_mode__cpu_with_fallback_else_503(
    backend_factory: Callable[..., Backend],
) -> None:
    system = System(backend_factory(safe_mode=True))
    try:
        seed_gpus(system)
        with serving(system) as orch:
            with orch.gpu_lease("agent-s", 1000, fallback="cpu") as lease:
                assert lease.cpu and lease.devices == []
            with pytest.raises(ApiError) as caught, orch.gpu_lease("agent-s", 1000):
                raise AssertionError("the block must not run")
            assert orch.leases() == []
    finally:
        system.close()

    assert caught.value.status == 503
    assert caught.value.body["reason"] == "safe_mode"


# -- no orchestrator -------------------------------------------------------------------------


def test_gpu_lease__fallback_cpu_on_a_dead_port_is_quick() -> None:
    started = time.monotonic()
    with gpu_lease(
        "agent-f", 4000, base_url=f"http://127.0.0.1:{dead_port()}", fallback="cpu"
    ) as lease:
        elapsed = time.monotonic() - started
        assert lease.cpu and lease.devices == [] and lease.token is None
        assert lease.env()["CUDA_VISIBLE_DEVICES"] == ""
    assert elapsed < 4


def test_gpu_lease__fallback_cpu_when_the_server_never_answers() -> None:
    # Accepts connections (the kernel's backlog) but never answers: only the timeout helps.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        with gpu_lease("agent-g", 4000, base_url=url, fallback="cpu") as lease:
            elapsed = time.monotonic() - started
            assert lease.cpu
    assert 1.5 < elapsed < 4


def test_gpu_lease__dead_port_without_fallback_raises_unreachable() -> None:
    url = f"http://127.0.0.1:{dead_port()}"
    with pytest.raises(Unreachable) as caught, gpu_lease("agent-h", 4000, base_url=url):
        raise AssertionError("the block must not run")
    assert caught.value.url == url
    with OrchestratorClient(url) as orch, pytest.raises(Unreachable):
        orch.submit("echo")
