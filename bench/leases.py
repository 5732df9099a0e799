"""Lease round trip: `POST /leases` then `POST /leases/{token}/release`, one after another,
on simulated GPUs reported by a worker process."""

from __future__ import annotations

import time
from typing import Any

from bench.env import bench_env, wait_until
from bench.http import LeanClient
from bench.stats import latency_ms

GPUS = {"ORCH_GPU_BACKEND": "simulated", "ORCH_GPU_SIMULATE": "2x24576"}


def round_trips(url: str, count: int) -> dict[str, Any]:
    samples = []
    with LeanClient(url) as http:
        for i in range(count + 20):  # the first 20 warm up
            t = time.perf_counter()
            status, lease = http.request("POST", "/leases", {"agent": "bench", "est_vram_mb": 1024})
            if status != 201:
                raise RuntimeError(f"lease: {status} {str(lease)[:300]}")
            status, released = http.request(
                "POST", f"/leases/{lease['token']}/release", {"success": True}
            )
            if status != 200:
                raise RuntimeError(f"release: {status} {str(released)[:300]}")
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
