"""One `Store` call at a time on a quiet thread, against the benchmark's MariaDB: where a
single-job transaction's time goes, without HTTP, Redis or worker threads around it.

Reports p50/p99 per call, the statements each call sends and its round trips to the server
(statements plus pings, COMMITs and ROLLBACKs; both counted, so not load-dependent), and a
raw one-row `UPDATE` + `COMMIT` on the driver as the floor. Runnable on its own
(`python -m bench.store_calls`) or as `scripts/bench --only store_calls`."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import pymysql.connections
import sqlalchemy as sa

from bench.env import bench_env
from bench.stats import latency_ms
from orchestrator.admission import Limits
from orchestrator.clock import SystemClock
from orchestrator.gpu import SimulatedProbe
from orchestrator.jobs import Dispatch, JobSpec, Priority
from orchestrator.leases import LeaseRequest
from orchestrator.store import SqlStore

WARMUP = 20


def _timed(
    store: SqlStore,
    count: int,
    call: Callable[[int], Any],
    untimed: Callable[[int], Any] | None = None,
) -> dict[str, Any]:
    """`call(i)` `count` times (after a warm-up); `untimed(i)`, if given, runs right after
    each call, outside the timing and the counts."""
    counts = {"statements": 0, "round_trips": 0}
    counting = [False]

    def on_execute(*_args: Any) -> None:
        counts["statements"] += counting[0]

    driver = pymysql.connections.Connection
    command = driver._execute_command

    def counted(conn: Any, *args: Any) -> Any:
        # Every command pymysql sends (query, COMMIT, ROLLBACK, ping) is one round trip.
        counts["round_trips"] += counting[0]
        return command(conn, *args)

    for i in range(WARMUP):
        call(i)
        if untimed is not None:
            untimed(i)
    sa.event.listen(store.engine, "before_cursor_execute", on_execute)
    samples = []
    driver._execute_command = counted
    try:
        for i in range(WARMUP, WARMUP + count):
            counting[0] = True
            t = time.perf_counter()
            call(i)
            samples.append(time.perf_counter() - t)
            counting[0] = False
            if untimed is not None:
                untimed(i)
    finally:
        driver._execute_command = command
        sa.event.remove(store.engine, "before_cursor_execute", on_execute)
    return {
        **latency_ms(samples),
        "statements_per_call": round(counts["statements"] / count, 2),
        "round_trips_per_call": round(counts["round_trips"] / count, 2),
    }


def run(count: int = 200) -> dict[str, Any]:
    with bench_env("calls") as env:
        store = SqlStore.from_url(env.db_url)
        clock = SystemClock()
        try:
            now = clock.now()
            spec = JobSpec("noop", {}, Priority.NORMAL, 3, 60.0, now, None, "bench")
            total = WARMUP + count
            made = store.submit_jobs([spec] * total, now)
            dispatches = [Dispatch(s.job.id, "noop", Priority.NORMAL, 1) for s in made]
            claims: list[Any] = [None] * total

            def claim(i: int) -> None:
                claims[i] = store.claim_job(dispatches[i], "bench-worker", clock.now())
                assert claims[i] is not None

            def complete(i: int) -> None:
                outcome = store.complete_job(claims[i], None, clock.now())
                assert outcome.status is not None

            def stale_claim(i: int) -> None:
                # A duplicate delivery: the claim must fail (DESIGN invariant 2).
                assert store.claim_job(dispatches[i], "bench-worker", clock.now()) is None

            def submit(_i: int) -> None:
                store.submit_jobs([spec], clock.now())

            # Two simulated 24 GiB cards on one node; one lease at a time, nobody waiting.
            store.report_node("n1", SimulatedProbe([24576, 24576]).read(), clock.now(), 90.0)
            limits = Limits(headroom_mb=512, stale_s=3600.0)
            ask = LeaseRequest(
                agent="bench",
                est_vram_mb=1024,
                gpu_count=1,
                ttl_s=60.0,
                wait_s=0.0,
                priority=Priority.NORMAL,
            )
            tokens: list[str] = [""] * (total + 1)

            def lease(i: int) -> None:
                outcome = store.request_lease(ask, clock.now(), limits)
                assert outcome.lease is not None and outcome.granted, outcome.denial
                tokens[i] = outcome.lease.token

            def release(i: int) -> None:
                store.release_lease(tokens[i], clock.now(), limits, success=True)

            raw = sa.create_engine(env.db_url)
            with raw.connect() as conn:
                conn.exec_driver_sql(
                    "CREATE TABLE bench_floor (id INT PRIMARY KEY, n INT NOT NULL)"
                )
                conn.exec_driver_sql("INSERT INTO bench_floor VALUES (1, 0)")
                conn.commit()
            dbapi = raw.raw_connection()

            def floor(_i: int) -> None:
                cur = dbapi.cursor()
                cur.execute("UPDATE bench_floor SET n = n + 1 WHERE id = 1")
                dbapi.commit()
                cur.close()

            figures = {
                "claim_job": _timed(store, count, claim),
                "complete_job": _timed(store, count, complete),
                "claim_job_stale": _timed(store, count, stale_claim),
                "submit_one": _timed(store, count, submit),
                # Each lease is released (untimed) before the next request, and each
                # release is of a lease just taken (untimed).
                "request_lease": _timed(store, count, lease, release),
                "release_lease": _timed(store, count, release, lambda i: lease(i + 1)),
                "raw_update_commit": {**_timed(store, count, floor), "statements_per_call": 1},
            }
            dbapi.close()
            raw.dispose()
            return figures
        finally:
            store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=200)
    args = parser.parse_args()
    print(json.dumps(run(args.count), indent=2))


if __name__ == "__main__":
    main()
