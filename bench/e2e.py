"""End to end: N no-op jobs through `POST /jobs/submit_batch` while worker processes run
them; jobs/s from the first submit to the last `done`, then an exactly-once audit."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Any

from bench.env import BenchEnv, bench_env, redis_client, rss_mb, wait_until
from bench.tasks import RUNS_KEY
from orchestrator.streams.keys import Keys

BATCH = 500
# Submitters in parallel: one HTTP client would leave the server idle between batches.
SUBMITTERS = 2


def submit_all(env: BenchEnv, total: int, batch: int = BATCH) -> float:
    """Submit `total` noop jobs in batches from SUBMITTERS threads; the wall time of the
    first request."""
    counts = [batch] * (total // batch) + ([total % batch] if total % batch else [])
    lock = threading.Lock()
    errors: list[str] = []

    def submitter() -> None:
        import httpx

        with httpx.Client(base_url=env.url, timeout=60) as http:
            while True:
                with lock:
                    if not counts:
                        return
                    n = counts.pop()
                body = {"jobs": [{"type": "noop", "payload": {}} for _ in range(n)]}
                response = http.post("/jobs/submit_batch", json=body)
                while response.status_code == 429:  # over the owner's submit rate: as a
                    # client should, wait as told and send the same batch again
                    time.sleep(float(response.headers.get("Retry-After", "1")))
                    response = http.post("/jobs/submit_batch", json=body)
                if response.status_code != 202:
                    errors.append(f"{response.status_code}: {response.text[:300]}")
                    return

    started = time.time()
    threads = [threading.Thread(target=submitter) for _ in range(SUBMITTERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"submit failed: {errors[0]}")
    return started


def wait_done(env: BenchEnv, total: int, timeout: float) -> None:
    """Until `total` jobs are `done`. While they run, the handler's Redis counter is polled,
    not the database: counting 20,000 rows twenty times a second would be MariaDB time that
    the peers' runs do not pay. The figure comes from the rows (`last_done`) either way."""
    client = redis_client()
    try:
        wait_until(
            lambda: int(client.get(env.prefix + RUNS_KEY) or 0) >= total,
            timeout,
            f"{total} handler runs",
            every=0.05,
        )
    finally:
        client.close()

    def done() -> bool:
        n = env.scalar("SELECT COUNT(*) FROM orchestrator_jobs WHERE status = 'done'")
        return int(n or 0) >= total

    wait_until(done, timeout, f"{total} jobs to be done", every=0.05)


def last_done(env: BenchEnv) -> float:
    at: datetime = env.scalar("SELECT MAX(finished_at) FROM orchestrator_jobs")
    return at.replace(tzinfo=UTC).timestamp()


# A job is `done` once its completion commits; its ack follows a moment later.
ACK_WAIT_S = 30


def redis_state(env: BenchEnv) -> dict[str, int]:
    """The noop streams' entries pending in a consumer group (delivered, never acked) and
    entries left at all (acks delete their entry: orchestrator/streams/redis_streams.py),
    and how many times the handler ran (bench/tasks.py)."""
    client = redis_client()
    try:
        pending = entries = 0
        for stream, _ in Keys(env.prefix).streams("noop"):
            if not client.exists(stream):
                continue
            entries += int(client.xlen(stream))
            pending += sum(int(g["pending"]) for g in client.xinfo_groups(stream))
        runs = int(client.get(env.prefix + RUNS_KEY) or 0)
    finally:
        client.close()
    return {"pending_entries": pending, "stream_entries": entries, "handler_runs": runs}


def audit(env: BenchEnv, total: int) -> dict[str, Any]:
    """Every job `done` on its first attempt, one start and one completion each in the audit
    trail, and no rejected or duplicate result; its handler ran once per job, and every
    delivery was acked (nothing pending, nothing left in the streams)."""
    checks = {
        "jobs": "SELECT COUNT(*) FROM orchestrator_jobs",
        "not_done": "SELECT COUNT(*) FROM orchestrator_jobs WHERE status <> 'done'",
        "not_one_attempt": "SELECT COUNT(*) FROM orchestrator_jobs WHERE attempts <> 1",
        "completed_events": (
            "SELECT COUNT(*) FROM orchestrator_job_events WHERE event = 'completed'"
        ),
        "started_events": "SELECT COUNT(*) FROM orchestrator_job_events WHERE event = 'started'",
        "duplicate_completions": (
            "SELECT COUNT(*) FROM (SELECT job_id FROM orchestrator_job_events "
            "WHERE event IN ('completed', 'started') GROUP BY job_id, event "
            "HAVING COUNT(*) > 1) d"
        ),
        "rejected_results": (
            "SELECT COUNT(*) FROM orchestrator_job_events "
            "WHERE event IN ('stale_result_rejected', 'reclaimed', 'released')"
        ),
        # A handler that raised (its attempt retried): it ran more often than once.
        "failed_attempts": (
            "SELECT COUNT(*) FROM orchestrator_job_events "
            "WHERE event IN ('retry_scheduled', 'dead_lettered')"
        ),
    }
    found = {name: int(env.scalar(sql) or 0) for name, sql in checks.items()}

    def all_acked() -> dict[str, int] | None:
        state = redis_state(env)
        return state if state["pending_entries"] == state["stream_entries"] == 0 else None

    try:
        found.update(wait_until(all_acked, ACK_WAIT_S, "every delivery to be acked", every=0.05))
    except TimeoutError:
        found.update(redis_state(env))  # what is left, for the report
    expected = {
        "jobs": total,
        "not_done": 0,
        "not_one_attempt": 0,
        "completed_events": total,
        "started_events": total,
        "duplicate_completions": 0,
        "rejected_results": 0,
        "failed_attempts": 0,
        "pending_entries": 0,
        "stream_entries": 0,
        "handler_runs": total,
    }
    found["exactly_once"] = found == expected
    if found["failed_attempts"]:
        found["first_error"] = env.scalar(
            "SELECT detail FROM orchestrator_job_events "
            "WHERE event IN ('retry_scheduled', 'dead_lettered') ORDER BY id LIMIT 1"
        )
    return found


def run(jobs: int, workers: int = 2, concurrency: int = 16, timeout: float = 300) -> dict[str, Any]:
    """One end-to-end run on a fresh database; raises if a job did not finish exactly once."""
    with bench_env("e2e", worker_concurrency=str(concurrency)) as env:
        env.serve()
        procs = env.workers(workers)
        rss_before = [rss_mb(p.pid) for p in procs]
        started = submit_all(env, jobs)
        submitted = time.time()
        wait_done(env, jobs, timeout)
        finished = last_done(env)
        checked = audit(env, jobs)
        rss_after = [rss_mb(p.pid) for p in procs]
    if not checked["exactly_once"]:
        raise AssertionError(f"exactly-once check failed: {checked}")
    seconds = finished - started
    return {
        "jobs": jobs,
        "workers": workers,
        "concurrency": concurrency,
        "seconds": round(seconds, 3),
        "jobs_per_s": round(jobs / seconds, 1),
        "submit_s": round(submitted - started, 3),
        "audit": checked,
        "worker_rss_mb_before": [round(m, 1) for m in rss_before],
        "worker_rss_mb_after": [round(m, 1) for m in rss_after],
    }


def run_queued(jobs: int, workers: int = 2, concurrency: int = 16) -> dict[str, Any]:
    """`jobs` queued first (table and stream that deep), then the workers start: jobs/s
    from the workers' start to the last `done`."""
    with bench_env("queued", worker_concurrency=str(concurrency)) as env:
        env.serve()
        submit_all(env, jobs)
        started = time.time()
        env.workers(workers)
        wait_done(env, jobs, 600)
        finished = last_done(env)
        checked = audit(env, jobs)
    if not checked["exactly_once"]:
        raise AssertionError(f"exactly-once check failed: {checked}")
    return {"jobs": jobs, "jobs_per_s": round(jobs / (finished - started), 1)}
