"""The worker's hot path with and without group commit, back to back on the same servers:
one in-process worker drains N queued no-op jobs. Reports jobs/s and the database
statements and commits per job (which, unlike time, do not depend on the machine's load).

"single" replaces the three groups (claims, completions, acks) with direct calls: one
`store.claim_job` per delivery (in the read loop, one after another), and per slot one
`store.complete_job` and one `streams.ack`, each on its own pool connection, concurrently
with the other slots'. (A group of at most one item would not do for the completions: it
still lets only one slot write at a time, which understates the baseline.)"""

from __future__ import annotations

import threading
import time
from typing import Any

import sqlalchemy as sa

from bench.env import bench_env, wait_until
from orchestrator.clock import SystemClock
from orchestrator.jobs import Dispatch, JobSpec, Priority
from orchestrator.settings import Settings
from orchestrator.store import SqlStore
from orchestrator.streams import RedisStreams
from workers import builtin
from workers.registry import HandlerRegistry
from workers.runtime import Worker

BATCH = 1000


def _drain(jobs: int, concurrency: int, grouped: bool) -> dict[str, Any]:
    with bench_env("abl") as env:
        settings = Settings(
            database_url=env.db_url,
            redis_url=env.env["ORCH_REDIS_URL"],
            redis_prefix=env.prefix,
            worker_concurrency=concurrency,
            read_block_ms=100,
        )
        store = SqlStore.from_url(env.db_url)
        streams = RedisStreams.from_url(settings.redis_url, env.prefix)
        clock = SystemClock()
        registry = HandlerRegistry()
        registry.add_module(builtin)
        registry.register("noop", lambda ctx: None)
        now = clock.now()
        spec = JobSpec("noop", {}, Priority.NORMAL, 3, 60.0, now, None, "bench")
        for i in range(0, jobs, BATCH):
            made = store.submit_jobs([spec] * min(BATCH, jobs - i), now)
            streams.publish([Dispatch(s.job.id, "noop", Priority.NORMAL, 1) for s in made])
        worker = Worker(store, streams, registry, settings, job_types=["noop"])
        if not grouped:
            _call_directly(worker, store, streams)
        counts = {"statements": 0, "commits": 0}

        def on_execute(*_args: Any) -> None:
            counts["statements"] += 1

        def on_commit(*_args: Any) -> None:
            counts["commits"] += 1

        sa.event.listen(store.engine, "before_cursor_execute", on_execute)
        sa.event.listen(store.engine, "commit", on_commit)
        thread = threading.Thread(target=worker.run, daemon=True)
        started = time.perf_counter()
        thread.start()
        try:
            wait_until(lambda: worker.completed >= jobs, 300, f"{jobs} jobs", every=0.01)
            seconds = time.perf_counter() - started
            snapshot = dict(counts)
        finally:
            worker.stop()
            thread.join(30)
            streams.close()
            store.close()
    return {
        "mode": "grouped" if grouped else "single",
        "jobs": jobs,
        "concurrency": concurrency,
        "jobs_per_s": round(jobs / seconds, 1),
        # Includes the worker's own background statements (heartbeats, registration).
        "statements_per_job": round(snapshot["statements"] / jobs, 2),
        "commits_per_job": round(snapshot["commits"] / jobs, 2),
    }


def _call_directly(worker: Worker, store: SqlStore, streams: RedisStreams) -> None:
    """Swaps the worker's group-commit callables for the calls they replaced."""
    claims: Any = worker._claims
    outcomes: Any = worker.outcomes  # its groups' attributes are typed as GroupCommit
    claims._claim = lambda deliveries: [
        store.claim_job(d.dispatch, worker.id, worker.clock.now()) for d in deliveries
    ]
    outcomes._completions = lambda item: store.complete_job(item[0], item[1], worker.clock.now())
    outcomes._acks = lambda delivery: streams.ack([delivery])


def run(jobs: int, concurrency: int = 4, rounds: int = 2) -> list[dict[str, Any]]:
    """Alternate single and grouped, so both see the same load."""
    return [_drain(jobs, concurrency, grouped) for _ in range(rounds) for grouped in (False, True)]
