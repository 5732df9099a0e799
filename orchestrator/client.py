"""The Python client SDK: submit jobs and wait on them, and hold GPU leases around CUDA code.

>>> from orchestrator.client import OrchestratorClient
>>> with OrchestratorClient("http://127.0.0.1:8014") as client:
...     job_id = client.submit("sleep", {"seconds": 3})
...     job = client.wait(job_id, timeout=60, on_progress=lambda j: print(j["progress"]))
...     print(job["status"], job["result"])

An agent that runs its own CUDA code takes a lease around it; the lease is heartbeated in a
background thread and released when the block ends, even when it raises:

>>> from orchestrator.client import gpu_lease
>>> with gpu_lease("my-agent", est_vram_mb=8000, fallback="cpu") as lease:
...     subprocess.run(["python", "train.py"], env={**os.environ, **lease.env()}, check=True)

Every error this module raises is an `OrchestratorError`: `ApiError` when the API answered
with an error (`LeaseDenied` for a lease it would not grant), `Unreachable` when it did not
answer at all, `WaitTimeout` when `wait` ran out of time. See docs/client.md.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from types import TracebackType
from typing import Any, Literal

import httpx

from orchestrator import __version__
from orchestrator.client_errors import (
    NOT_JSON,
    ApiError,
    LeaseDenied,
    Unreachable,
    WaitTimeout,
    body_of,
)
from orchestrator.client_lease import GpuLease, Heartbeater, cpu_fallback
from orchestrator.errors import OrchestratorError

logger = logging.getLogger(__name__)

__all__ = [
    "TERMINAL_STATUSES",
    "ApiError",
    "GpuLease",
    "LeaseDenied",
    "OrchestratorClient",
    "OrchestratorError",
    "Unreachable",
    "WaitTimeout",
    "gpu_lease",
]

TERMINAL_STATUSES = frozenset({"done", "dead_letter", "cancelled"})

# Answers that mean "the orchestrator cannot serve this now" rather than "no": safe mode,
# degraded GPUs, or a proxy in front of a replica that is down. A CPU fallback covers them.
_UNAVAILABLE_STATUSES = frozenset({502, 503, 504})


class OrchestratorClient:
    """A client of the orchestrator's HTTP API, over one reusable connection pool.

    `base_url` defaults to the settings' API URL (`ORCH_API_URL`, else `ORCH_HOST`/`ORCH_PORT`);
    `token` is sent as `Authorization: Bearer <token>` (default `ORCH_API_TOKEN`; "" sends
    none); `timeout` (seconds) bounds each
    request. It is safe to share between threads. Close it, or use it as a context manager:

    >>> with OrchestratorClient() as client:
    ...     client.get(client.submit("echo", {"hello": "world"}))
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        token: str | None = None,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if base_url is None or token is None:
            from orchestrator.settings import Settings

            settings = Settings()
            base_url = settings.resolved_api_url() if base_url is None else base_url
            token = settings.api_token if token is None else token
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        headers = {"user-agent": f"gpu-orchestrator-client/{__version__}"}
        if token:
            headers["authorization"] = f"Bearer {token}"
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout, transport=transport
        )

    def close(self) -> None:
        """Close the connections (a lease still held from this client stops heartbeating)."""
        self._http.close()

    def __enter__(self) -> OrchestratorClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"OrchestratorClient({self.base_url!r})"

    # -- jobs --------------------------------------------------------------------------------

    def submit(
        self,
        type: str,
        payload: Any = None,
        *,
        priority: str | None = None,
        idempotency_key: str | None = None,
        max_attempts: int | None = None,
        timeout_s: float | None = None,
        run_at: datetime | str | None = None,
        delay_s: float | None = None,
        gpu: Mapping[str, Any] | None = None,
    ) -> str:
        """Submit one job; its id. Only `type` is required.

        `priority` is `critical`, `high`, `normal` or `low`; `run_at` (a naive datetime is
        UTC) or `delay_s` schedules it; `gpu` (`{"est_vram_mb", "gpu_count", "model_id"}`)
        asks for a lease around its handler. With an `idempotency_key`, a retry of the same
        call returns the same job, so a submit that raised `Unreachable` can be sent again.

        >>> client.submit("inference_jobs", {"prompt": "hi"}, priority="high",
        ...               idempotency_key="req-42", gpu={"est_vram_mb": 8000})
        """
        body = _job_body(
            type,
            payload,
            priority=priority,
            idempotency_key=idempotency_key,
            max_attempts=max_attempts,
            timeout_s=timeout_s,
            run_at=run_at,
            delay_s=delay_s,
            gpu=gpu,
        )
        answer = self._call("POST", "/jobs/submit", json=body)
        return str(answer["job_id"])

    def submit_batch(self, jobs: list[Mapping[str, Any]]) -> list[str]:
        """Submit many jobs at once, all or nothing; their ids, in order. Each item has
        the fields of `submit` (`{"type": "echo", "payload": {...}, "priority": "low"}`)."""
        body = {"jobs": [{k: _jsonable(v) for k, v in j.items() if v is not None} for j in jobs]}
        answer = self._call("POST", "/jobs/submit_batch", json=body)
        return [str(item["job_id"]) for item in answer["jobs"]]

    def get(self, job_id: str) -> dict[str, Any]:
        """The job: `status`, `progress`, `result`, `error`, `attempts`... (see docs/api.md)."""
        job: dict[str, Any] = self._call("GET", f"/jobs/{job_id}")
        return job

    def events(self, job_id: str) -> list[dict[str, Any]]:
        """The job's audit trail, oldest first."""
        events: list[dict[str, Any]] = self._call("GET", f"/jobs/{job_id}/events")["events"]
        return events

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel the job; the job after. A waiting job is `cancelled` at once; a running
        one gets `cancel_requested` and ends `cancelled` soon (`wait` for it). A finished
        job raises `ApiError` with code `job_finished`."""
        job: dict[str, Any] = self._call("POST", f"/jobs/{job_id}/cancel")
        return job

    def wait(
        self,
        job_id: str,
        timeout: float | None = None,
        *,
        on_progress: Callable[[dict[str, Any]], object] | None = None,
        poll_s: float = 0.25,
    ) -> dict[str, Any]:
        """Wait until the job is `done`, `dead_letter` or `cancelled`, and return it.

        A `failed` job is waiting for a retry, so `wait` goes on. `on_progress(job)` is
        called with the first state seen and whenever the status or the progress changes.
        After `timeout` seconds (None: no limit) it raises `WaitTimeout`; the job goes on.

        >>> job = client.wait(job_id, timeout=300, on_progress=lambda j: print(j["progress"]))
        >>> job["result"] if job["status"] == "done" else job["error"]
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        seen: tuple[Any, Any] | None = None
        job: dict[str, Any] | None = None
        while True:
            job = self.get(job_id)
            state = (job.get("status"), job.get("progress"))
            if on_progress is not None and state != seen:
                on_progress(job)
            seen = state
            if job.get("status") in TERMINAL_STATUSES:
                return job
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    assert timeout is not None
                    raise WaitTimeout(job_id, timeout, job)
                time.sleep(min(poll_s, left))
            else:
                time.sleep(poll_s)

    # -- GPU leases --------------------------------------------------------------------------

    def leases(self) -> list[dict[str, Any]]:
        """The active leases."""
        leases: list[dict[str, Any]] = self._call("GET", "/leases")["leases"]
        return leases

    @contextmanager
    def gpu_lease(
        self,
        agent: str,
        est_vram_mb: int,
        *,
        gpu_count: int = 1,
        ttl_s: float = 60.0,
        priority: str = "normal",
        wait_s: float = 0.0,
        operation: str | None = None,
        model_id: str | None = None,
        node: str | None = None,
        job_id: str | None = None,
        fallback: Literal["cpu"] | None = None,
        connect_timeout: float = 2.0,
        estimated_duration_s: float | None = None,
    ) -> Iterator[GpuLease]:
        """Hold a GPU lease for the block: heartbeated every `ttl_s`/3 in a daemon thread,
        released on exit with the peak VRAM reported and `success` (the block raised
        nothing). The block's exception, if any, propagates.

        `est_vram_mb` is per device, on `gpu_count` devices of one node (`node`: any). With
        `wait_s` > 0 the request queues up to that long for capacity. A request that is not
        granted raises `LeaseDenied` (with its `reason`). If the orchestrator does not
        answer within `connect_timeout`, or answers that it cannot grant leases now (503:
        safe mode, degraded GPUs), `fallback="cpu"` yields a CPU lease (`cpu=True`, no
        devices) instead of failing; without it, that raises `Unreachable` or `ApiError`.
        `estimated_duration_s` (how long the block holds it) orders it under the
        `shortest_first` policy (docs/scheduling.md).

        >>> with client.gpu_lease("embedder", est_vram_mb=6000, fallback="cpu") as lease:
        ...     device = f"cuda:{lease.devices[0]}" if not lease.cpu else "cpu"
        ...     lease.report_vram(torch.cuda.max_memory_allocated() >> 20)
        """
        if fallback not in (None, "cpu"):
            raise ValueError(f"fallback must be None or 'cpu', not {fallback!r}")
        request = {
            "agent": agent,
            "operation": operation,
            "model_id": model_id,
            "est_vram_mb": est_vram_mb,
            "gpu_count": gpu_count,
            "ttl_s": ttl_s,
            "priority": priority,
            "wait_s": wait_s,
            "job_id": job_id,
            "node": node,
            "estimated_duration_s": estimated_duration_s,
        }
        lease = self._acquire(
            {k: v for k, v in request.items() if v is not None}, fallback, connect_timeout
        )
        if lease.cpu:
            yield lease
            return
        interval = float(lease.info.get("ttl_s") or ttl_s) / 3
        beater: Heartbeater | None = None
        success = False
        try:
            beater = Heartbeater(self, lease, interval, connect_timeout)
            beater.start()
            yield lease
            success = True
        finally:
            if beater is not None:
                beater.stop()
            # An unreachable orchestrator must not hold the block's exit for long either.
            self._release(lease, success, httpx.Timeout(self.timeout, connect=connect_timeout))

    def _acquire(
        self, body: dict[str, Any], fallback: str | None, connect_timeout: float
    ) -> GpuLease:
        wait_s = float(body.get("wait_s") or 0.0)
        # A queued request (wait_s > 0) is answered only when granted or timed out, so the
        # read timeout covers the wait. Without a fallback, a slow answer is worth waiting
        # for: giving up early would leave a granted lease behind until its ttl runs out.
        patience = connect_timeout if fallback else max(self.timeout, connect_timeout)
        timeout = httpx.Timeout(wait_s + patience, connect=connect_timeout)
        agent = body["agent"]
        try:
            response = self._send("POST", "/leases", json=body, timeout=timeout)
        except Unreachable as exc:
            if fallback != "cpu":
                raise
            return cpu_fallback(agent, exc.message)
        if response.status_code in _UNAVAILABLE_STATUSES and fallback == "cpu":
            error = ApiError.from_response(response)
            return cpu_fallback(agent, str(error))
        if response.status_code == 409:
            raise LeaseDenied.from_response(response)
        lease = GpuLease.of(self._decode(response))
        logger.info(
            "lease %s acquired by %s: node %s, devices %s",
            lease.short_token,
            agent,
            lease.node,
            lease.cuda_visible_devices,
            extra={"event": "lease_acquired", "lease": lease.short_token, "agent": agent},
        )
        return lease

    def _heartbeat(self, lease: GpuLease, timeout: httpx.Timeout) -> None:
        with lease._lock:
            used = lease.used_vram_mb
        body = {} if used is None else {"used_vram_mb": used}
        answer = self._call("POST", f"/leases/{lease.token}/heartbeat", json=body, timeout=timeout)
        lease._renewed(answer)

    def _release(self, lease: GpuLease, success: bool, timeout: httpx.Timeout) -> None:
        with lease._lock:
            body = {"peak_vram_mb": lease.peak_vram_mb, "success": success}
        try:
            answer = self._call(
                "POST", f"/leases/{lease.token}/release", json=body, timeout=timeout
            )
        except (ApiError, Unreachable) as exc:
            # The block's outcome matters more than the bookkeeping: a lease not released
            # expires after its ttl anyway, so this never raises over the block's result.
            level = logging.INFO if lease.lost else logging.WARNING
            logger.log(
                level,
                "lease %s: release failed (%s); it expires after its ttl",
                lease.short_token,
                exc,
                extra={"event": "lease_release_failed", "lease": lease.short_token},
            )
            return
        lease._renewed(answer)
        logger.info(
            "lease %s released (%s; success %s, peak %s MB)",
            lease.short_token,
            answer.get("status"),
            success,
            body["peak_vram_mb"],
            extra={"event": "lease_released", "lease": lease.short_token},
        )

    # -- HTTP ----------------------------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        timeout: httpx.Timeout | None = None,
    ) -> Any:
        """Send a request; its decoded JSON. An error answer raises `ApiError`."""
        return self._decode(self._send(method, path, json=json, timeout=timeout))

    def _send(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        timeout: httpx.Timeout | None = None,
    ) -> httpx.Response:
        try:
            return self._http.request(
                method,
                path,
                json=json,
                timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
            )
        except httpx.TimeoutException as exc:
            raise Unreachable(
                f"the orchestrator at {self.base_url} did not answer {method} {path} in time "
                f"({type(exc).__name__})",
                self.base_url,
            ) from exc
        except httpx.TransportError as exc:
            raise Unreachable(
                f"cannot reach the orchestrator at {self.base_url} ({exc or type(exc).__name__});"
                " is it running? (set ORCH_API_URL or pass base_url)",
                self.base_url,
            ) from exc

    @staticmethod
    def _decode(response: httpx.Response) -> Any:
        if response.status_code >= 400:
            raise ApiError.from_response(response)
        body = body_of(response)
        if body is NOT_JSON:
            raise ApiError.from_response(response)
        return body


@contextmanager
def gpu_lease(
    agent: str,
    est_vram_mb: int,
    *,
    gpu_count: int = 1,
    ttl_s: float = 60.0,
    priority: str = "normal",
    wait_s: float = 0.0,
    operation: str | None = None,
    model_id: str | None = None,
    node: str | None = None,
    job_id: str | None = None,
    fallback: Literal["cpu"] | None = None,
    connect_timeout: float = 2.0,
    base_url: str | None = None,
    token: str | None = None,
    estimated_duration_s: float | None = None,
) -> Iterator[GpuLease]:
    """`OrchestratorClient.gpu_lease` on a client of its own (from the settings unless
    `base_url` is given), closed after the block.

    >>> with gpu_lease("my-agent", est_vram_mb=8000, fallback="cpu") as lease:
    ...     subprocess.run(cmd, env={**os.environ, **lease.env()}, check=True)
    """
    with (
        OrchestratorClient(base_url, token=token) as client,
        client.gpu_lease(
            agent,
            est_vram_mb,
            gpu_count=gpu_count,
            ttl_s=ttl_s,
            priority=priority,
            wait_s=wait_s,
            operation=operation,
            model_id=model_id,
            node=node,
            job_id=job_id,
            fallback=fallback,
            connect_timeout=connect_timeout,
            estimated_duration_s=estimated_duration_s,
        ) as lease,
    ):
        yield lease


def _jsonable(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _job_body(type: str, payload: Any, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"type": type}
    if payload is not None:
        body["payload"] = payload
    for name, value in fields.items():
        if value is not None:
            body[name] = dict(value) if name == "gpu" else _jsonable(value)
    return body
