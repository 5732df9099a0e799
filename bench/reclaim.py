"""Reclaim: N jobs whose worker died (running, heartbeat long past); one reclaimer pass
requeues them all. Runs the engine's `Reclaimer` in this process on the real servers."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from bench.env import bench_env
from orchestrator.clock import SystemClock
from orchestrator.jobs import JobSpec, Priority
from orchestrator.reclaimer import Reclaimer
from orchestrator.settings import Settings
from orchestrator.store import SqlStore
from orchestrator.streams import RedisStreams

BATCH = 1000


def run(jobs: int) -> dict[str, Any]:
    with bench_env("reclaim") as env:
        settings = Settings(
            database_url=env.db_url, redis_url=env.env["ORCH_REDIS_URL"], redis_prefix=env.prefix
        )
        store = SqlStore.from_url(env.db_url)
        streams = RedisStreams.from_url(settings.redis_url, env.prefix)
        clock = SystemClock()
        try:
            now = clock.now()
            spec = JobSpec("noop", {}, Priority.NORMAL, 3, 60.0, now, None, "bench")
            for i in range(0, jobs, BATCH):
                store.submit_jobs([spec] * min(BATCH, jobs - i), now)
            # Their worker died an hour ago, mid-attempt.
            stale = now - timedelta(hours=1)
            with env.engine.begin() as conn:
                conn.exec_driver_sql(
                    "UPDATE orchestrator_jobs SET status = 'running', attempts = 1, "
                    "worker_id = 'gone', claim_token = 'lost', heartbeat_at = %s",
                    (stale.replace(tzinfo=None),),
                )
            reclaimer = Reclaimer(store, streams, settings, clock)
            t = time.perf_counter()
            report = reclaimer.reclaim(relay=False)
            seconds = time.perf_counter() - t
        finally:
            streams.close()
            store.close()
        requeued = int(
            env.scalar("SELECT COUNT(*) FROM orchestrator_jobs WHERE status = 'pending'") or 0
        )
    if report.requeued != jobs or requeued != jobs:
        raise AssertionError(f"reclaim requeued {report.requeued} ({requeued} pending) of {jobs}")
    return {"jobs": jobs, "seconds": round(seconds, 3), "jobs_per_s": round(jobs / seconds)}
