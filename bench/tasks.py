"""The no-op handler every system runs in the benchmark."""

from __future__ import annotations

import os
import threading

import redis

from workers.context import JobContext
from workers.registry import handler

# Under the run's key prefix (removed with it): how many times `noop` ran, so the audit can
# tell that each job's handler ran exactly once (bench/e2e.py).
RUNS_KEY = "bench:noop_runs"

_lock = threading.Lock()
_client: redis.Redis | None = None


def _redis() -> redis.Redis | None:
    global _client
    url = os.environ.get("ORCH_REDIS_URL")
    if url is None:
        return None  # not started by bench/env.py: nothing to count for
    with _lock:
        if _client is None:
            _client = redis.Redis.from_url(url, socket_connect_timeout=2)
        return _client


@handler("noop")
def noop(ctx: JobContext) -> None:
    """Does no work (the benchmark measures the system, not the work) but count its run."""
    client = _redis()
    if client is not None:
        client.incr(os.environ.get("ORCH_REDIS_PREFIX", "") + RUNS_KEY)
