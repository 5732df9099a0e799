"""The no-op handler every system runs in the benchmark."""

from __future__ import annotations

import os

from bench.counter import count
from workers.context import JobContext
from workers.registry import handler

# Under the run's key prefix (removed with it): how many times `noop` ran, so the audit can
# tell that each job's handler ran exactly once (bench/e2e.py).
RUNS_KEY = "bench:noop_runs"


@handler("noop")
def noop(ctx: JobContext) -> None:
    """Does no work (the benchmark measures the system, not the work) but count its run."""
    url = os.environ.get("ORCH_REDIS_URL")
    if url is not None:  # None: not started by bench/env.py, nothing to count for
        count(url, os.environ.get("ORCH_REDIS_PREFIX", "") + RUNS_KEY)
