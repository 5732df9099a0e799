"""Priority bands and delays."""

from __future__ import annotations

import time
from datetime import datetime

from orchestrator.jobs import Dispatch, Priority
from tests.integration.harness import System, wait_until
from workers.context import JobContext


def test_priority__critical_behind_500_low_starts_first(system: System) -> None:
    lows = system.client.post(
        "/jobs/submit_batch", json={"jobs": [{"type": "record", "priority": "low"}] * 500}
    ).json()["jobs"]
    critical = system.submit(type="record", priority="critical")
    system.start_worker(concurrency=1)
    wait_until(lambda: len(system.recorder.runs) == 501, 60, "all 501 jobs to run")
    order = system.recorder.order()
    assert order[0] == critical
    assert sorted(order[1:]) == sorted(j["job_id"] for j in lows)


def test_priority__critical_overtakes_a_backlog_already_being_worked(system: System) -> None:
    registry = system.recorder.registry()

    def slow_low(ctx: JobContext) -> None:
        system.recorder.record(ctx)
        time.sleep(0.005)

    registry.register("work", slow_low)
    system.start_worker(registry=registry, concurrency=2)
    system.client.post(
        "/jobs/submit_batch", json={"jobs": [{"type": "work", "priority": "low"}] * 300}
    )
    wait_until(lambda: len(system.recorder.runs) >= 20, 30, "the backlog to be under way")
    critical = system.submit(type="work", priority="critical")
    # Counted once the submit has returned: jobs that start while it is on its way
    # (the worker keeps going) are not ones the critical job failed to overtake.
    started_before = len(system.recorder.runs)
    wait_until(lambda: critical in system.recorder.order(), 30, "the critical job to run")
    position = system.recorder.order().index(critical)
    # At most the slots' worth in flight plus one read-ahead batch may go before it.
    assert position <= started_before + 2 * 2 + 4, (position, started_before)
    assert position < 200


def test_priority__high_before_normal_before_low(system: System) -> None:
    low = system.submit(type="record", priority="low")
    normal = system.submit(type="record")
    high = system.submit(type="record", priority="high")
    system.start_worker(concurrency=1)
    wait_until(lambda: len(system.recorder.runs) == 3, 10, "three runs")
    assert system.recorder.order() == [high, normal, low]


def test_delay__job_does_not_start_before_run_at(system: System) -> None:
    system.start_worker()
    job_id = system.submit(type="record", delay_s=1.0)
    # An early message (a duplicate, say) must not start it either.
    system.services.streams.publish([Dispatch(job_id, "record", Priority.NORMAL, 1)])
    job = system.wait_status(job_id, timeout=10)
    assert job["status"] == "done"
    assert datetime.fromisoformat(job["started_at"]) >= datetime.fromisoformat(job["available_at"])
    assert system.recorder.count(job_id) == 1
