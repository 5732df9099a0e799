"""Lease round trip: `POST /leases` then `POST /leases/{token}/release`, one after another,
on simulated GPUs reported by a worker process."""

from __future__ import annotations

import time
from typing import Any

import httpx

from bench.env import bench_env, wait_until
from bench.stats import latency_ms

GPUS = {"ORCH_GPU_BACKEND": "simulated", "ORCH_GPU_SIMULATE": "2x24576"}


def round_trips(url: str, count: int) -> dict[str, Any]:
    samples = []
    with httpx.Client(base_url=url, timeout=30) as http:
        for i in range(count + 20):  # the first 20 warm up
            t = time.perf_counter()
            lease = http.post("/leases", json={"agent": "bench", "est_vram_mb": 1024})
            if lease.status_code != 201:
                raise RuntimeError(f"lease: {lease.status_code} {lease.text[:300]}")
            token = lease.json()["token"]
            released = http.post(f"/leases/{token}/release", json={"success": True})
            if released.status_code != 200:
                raise RuntimeError(f"release: {released.status_code} {released.text[:300]}")
            if i >= 20:
                samples.append(time.perf_counter() - t)
    return latency_ms(samples)


def run(count: int) -> dict[str, Any]:
    with bench_env("lease") as env:
        env.serve()
        env.workers(1, env=GPUS)

        def reported() -> bool:
            return len(env.http.get("/gpu_state").json().get("gpus", [])) >= 2

        wait_until(reported, 30, "the simulated GPUs to be reported", every=0.1)
        return round_trips(env.url, count)
