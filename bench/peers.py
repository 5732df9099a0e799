"""Celery and Dramatiq, each with 2 worker processes on the same Redis, running the same
number of no-op jobs: jobs/s from the first enqueue to the last job done."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from bench.env import REDIS_URL, ROOT, Proc, delete_prefix, redis_client, wait_until
from orchestrator.ids import new_token

BIN = Path(sys.executable).parent
# One prefix per peer for this process: the peer modules read it once, at import.
RUN = new_token()[:8]


def _worker_args(peer: str, workers: int) -> list[str]:
    if peer == "celery":
        return [
            str(BIN / "celery"), "-A", "bench.peer_celery", "worker", "--pool", "prefork",
            "--concurrency", str(workers), "--without-gossip", "--without-mingle",
            "--without-heartbeat", "--loglevel", "WARNING",
        ]  # fmt: skip
    return [
        str(BIN / "dramatiq"), "bench.peer_dramatiq", "--processes", str(workers),
        "--queues", "bench",
    ]  # fmt: skip


def run(peer: str, jobs: int, workers: int = 2, timeout: float = 300) -> dict[str, Any]:
    prefix = f"bench:{peer}:{RUN}:"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "BENCH_PREFIX": prefix,
        "BENCH_REDIS_URL": REDIS_URL,
    }
    os.environ.update(BENCH_PREFIX=prefix, BENCH_REDIS_URL=REDIS_URL)
    client = redis_client()
    log = Path(f"/tmp/{prefix.replace(':', '_')}{peer}.log")
    proc = Proc(_worker_args(peer, workers), env, log)
    try:
        if peer == "celery":
            from bench import peer_celery as module
        else:
            from bench import peer_dramatiq as module  # type: ignore[no-redef]
        time.sleep(3)  # the workers boot and subscribe (not timed)
        if not proc.alive():
            raise RuntimeError(f"{peer} exited:\n{proc.output()}")
        counter = f"{prefix}done"
        started = time.time()
        send = module.noop.delay if peer == "celery" else module.noop.send
        for _ in range(jobs):
            send()
        wait_until(lambda: int(client.get(counter) or 0) >= jobs, timeout, f"{peer} jobs", 0.005)
        seconds = time.time() - started
        done = int(client.get(counter) or 0)
    finally:
        proc.stop()
        delete_prefix(client, prefix)
        client.close()
        log.unlink(missing_ok=True)
    return {"peer": peer, "jobs": jobs, "done": done, "seconds": round(seconds, 3),
            "jobs_per_s": round(jobs / seconds, 1)}  # fmt: skip
