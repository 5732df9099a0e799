"""Worker memory: resident set of each worker process after a warm-up, and again after
N more jobs. Growth past a few MB over many jobs would be a leak."""

from __future__ import annotations

from typing import Any

from bench.e2e import submit_all, wait_done
from bench.env import bench_env, rss_mb

WARM_UP = 1000


def run(jobs: int, workers: int = 2, concurrency: int = 16) -> dict[str, Any]:
    with bench_env("mem", worker_concurrency=str(concurrency)) as env:
        env.serve()
        procs = env.workers(workers)
        submit_all(env, WARM_UP)
        wait_done(env, WARM_UP, 120)
        before = [rss_mb(p.pid) for p in procs]
        submit_all(env, jobs)
        wait_done(env, WARM_UP + jobs, 600)
        after = [rss_mb(p.pid) for p in procs]
    growth = [a - b for a, b in zip(after, before, strict=True)]
    return {
        "jobs": jobs,
        "rss_mb_before": [round(m, 1) for m in before],
        "rss_mb_after": [round(m, 1) for m in after],
        "max_growth_mb": round(max(growth), 1),
    }
