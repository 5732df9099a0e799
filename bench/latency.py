"""Latency: single submits (one client, then 8 concurrent), and idle latency (one job at a
time, from submit until its `done` is visible through the API)."""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import httpx

from bench.env import BenchEnv, bench_env, wait_until
from bench.http import LeanClient
from bench.stats import latency_ms

CLIENTS = 8


def _submit(http: LeanClient) -> str:
    status, body = http.request("POST", "/jobs/submit", {"type": "noop", "payload": {}})
    if status != 202:
        raise RuntimeError(f"submit: {status} {str(body)[:300]}")
    job_id: str = body["job_id"]
    return job_id


def _client(args: tuple[str, int]) -> list[float]:
    url, count = args
    samples = []
    with LeanClient(url) as http:
        for _ in range(count):
            t = time.perf_counter()
            _submit(http)
            samples.append(time.perf_counter() - t)
    return samples


def _sdk_submits(url: str, count: int) -> list[float]:
    """Single submits through httpx (the SDK's HTTP client): what a Python caller sees."""
    samples = []
    with httpx.Client(base_url=url, timeout=30) as http:
        for i in range(count + 20):
            t = time.perf_counter()
            response = http.post("/jobs/submit", json={"type": "noop", "payload": {}})
            if response.status_code != 202:
                raise RuntimeError(f"submit: {response.status_code} {response.text[:300]}")
            if i >= 20:
                samples.append(time.perf_counter() - t)
    return samples


def submit_latency(url: str, count: int) -> dict[str, Any]:
    """`count` submits one after another, then `count` spread over CLIENTS processes."""
    with LeanClient(url) as http:
        for _ in range(20):  # warm-up: connections, caches
            _submit(http)
        samples = []
        for _ in range(count):
            t = time.perf_counter()
            _submit(http)
            samples.append(time.perf_counter() - t)
    single = latency_ms(samples)
    sdk = latency_ms(_sdk_submits(url, count))

    # Each client is a process of its own: eight threads of one Python process would
    # measure its GIL, not the server.
    per_client = max(1, count // CLIENTS)
    with ProcessPoolExecutor(CLIENTS, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_client, [(url, 1)] * CLIENTS))  # start the processes (not timed)
        started = time.perf_counter()
        concurrent = [s for part in pool.map(_client, [(url, per_client)] * CLIENTS) for s in part]
        elapsed = time.perf_counter() - started
    return {
        "single": single,
        "sdk": sdk,
        "concurrent": {
            "clients": CLIENTS,
            **latency_ms(concurrent),
            "submits_per_s": round(len(concurrent) / elapsed, 1),
        },
    }


def idle_latency(url: str, count: int) -> dict[str, Any]:
    """Submit one job, poll GET /jobs/{id} until it says done; next."""
    samples = []
    with LeanClient(url) as http:
        for i in range(count + 5):
            t = time.perf_counter()
            job_id = _submit(http)
            while http.request("GET", f"/jobs/{job_id}")[1]["status"] != "done":
                if time.perf_counter() - t > 30:
                    raise TimeoutError(f"job {job_id} not done in 30 s")
            if i >= 5:  # the first few warm the workers' connections
                samples.append(time.perf_counter() - t)
    return latency_ms(samples)


def commit_latency(env: BenchEnv, count: int = 200) -> dict[str, Any]:
    """One single-row INSERT + COMMIT, timed: the floor under every durable transition, and
    the best gauge of how busy the machine's disk and MariaDB are while the figures are taken."""
    samples = []
    with env.engine.connect() as conn:
        conn.exec_driver_sql("CREATE TABLE bench_probe (id INT AUTO_INCREMENT PRIMARY KEY, v INT)")
        conn.commit()
        for i in range(count):
            t = time.perf_counter()
            conn.exec_driver_sql("INSERT INTO bench_probe (v) VALUES (%s)", (i,))
            conn.commit()
            samples.append(time.perf_counter() - t)
    return latency_ms(samples)


def run(submits: int, idle: int) -> dict[str, Any]:
    with bench_env("lat") as env:
        env.serve()
        result = {"commit": commit_latency(env), "submit": submit_latency(env.url, submits)}
        # Idle latency needs the queue empty: workers start after the submits above.
        env.workers(2)
        _drain(env)
        result["idle"] = idle_latency(env.url, idle)
    return result


def _drain(env: BenchEnv) -> None:
    def empty() -> bool:
        n = env.scalar("SELECT COUNT(*) FROM orchestrator_jobs WHERE status <> 'done'")
        return int(n or 0) == 0

    wait_until(empty, 120, "the queue to drain", every=0.1)
