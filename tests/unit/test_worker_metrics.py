"""`WorkerMetrics` and the observer's outcome names, hook by hook, without a worker."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.fleet import WorkerRegistration
from orchestrator.jobs import JobStatus
from orchestrator.store import Outcome
from workers import observer
from workers.metrics import WorkerMetrics
from workers.observer import WorkerObserver, WorkerView, outcome_of


def claim(job_type: str = "echo", token: str = "t1") -> Any:
    return SimpleNamespace(job=SimpleNamespace(type=job_type), token=token, attempt=1)


def samples(metrics: WorkerMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            found[(s.name.removeprefix("gpu_orchestrator_"), tuple(sorted(s.labels.items())))] = (
                s.value
            )
    return found


@pytest.mark.parametrize(
    ("status", "name"),
    [
        (JobStatus.DONE, "done"),
        (JobStatus.FAILED, "retry"),
        (JobStatus.DEAD_LETTER, "dead_letter"),
        (JobStatus.CANCELLED, "cancelled"),
        (JobStatus.PENDING, "released"),
        (None, "fenced"),
    ],
)
def test_outcome_of__names_what_the_store_recorded(status: JobStatus | None, name: str) -> None:
    assert outcome_of(Outcome(status)) == name
    assert name in observer.OUTCOMES


def test_base_observer__every_hook_does_nothing() -> None:
    hooks = WorkerObserver()
    assert hooks.lease_metrics() is None
    hooks.job_claimed(claim())
    hooks.job_started(claim())
    hooks.job_finished(claim(), observer.DONE)


def test_worker_metrics__hooks_move_their_counters() -> None:
    m = WorkerMetrics()
    slots = {"idle": 3, "running": 1}
    registration = WorkerRegistration("w1", "node-a", None, 7, ["echo"], 4)
    m.bind(WorkerView(registration, lambda: slots["idle"], lambda: slots["running"]))

    m.job_claimed(claim(token="a"))
    m.job_started(claim(token="a"))
    m.job_finished(claim(token="a"), observer.DONE)
    m.job_claimed(claim("gpu", "b"))
    m.job_given_back(claim("gpu", "b"), observer.GIVEN_BACK_AFFINITY)
    m.job_claimed(claim("gpu", "c"))
    m.job_finished(claim("gpu", "c"), observer.UNRECORDED)  # never started: no run time
    m.delivery_skipped(SimpleNamespace(type="echo"))  # type: ignore[arg-type]
    s = samples(m)

    assert s[("worker_info", (("node", "node-a"), ("pool", ""), ("worker", "w1")))] == 1
    assert s[("worker_slots", (("state", "idle"),))] == 3
    assert s[("worker_slots", (("state", "busy"),))] == 1
    assert s[("worker_jobs_running", ())] == 1
    assert s[("job_attempts_total", (("type", "echo"),))] == 1
    assert s[("job_attempts_total", (("type", "gpu"),))] == 2
    assert s[("worker_jobs_started_total", (("type", "echo"),))] == 1
    assert s[("worker_jobs_finished_total", (("outcome", "done"), ("type", "echo")))] == 1
    assert s[("worker_jobs_finished_total", (("outcome", "unrecorded"), ("type", "gpu")))] == 1
    assert s[("job_run_seconds_count", (("type", "echo"),))] == 1
    assert ("job_run_seconds_count", (("type", "gpu"),)) not in s
    assert s[("jobs_given_back_total", (("reason", "model_affinity"), ("type", "gpu")))] == 1
    assert s[("worker_deliveries_skipped_total", (("type", "echo"),))] == 1

    slots["idle"] = 4  # read live, at each scrape
    assert samples(m)[("worker_slots", (("state", "busy"),))] == 0


def test_worker_metrics__retry_and_dead_letter_also_count_on_their_own() -> None:
    m = WorkerMetrics()
    for token, outcome in (("a", observer.RETRY), ("b", observer.DEAD_LETTER)):
        m.job_started(claim("fail", token))
        m.job_finished(claim("fail", token), outcome)
    s = samples(m)
    assert s[("job_retries_total", (("type", "fail"),))] == 1
    assert s[("dead_letters_total", (("type", "fail"),))] == 1
    assert s[("job_run_seconds_count", (("type", "fail"),))] == 2
    assert m.lease_metrics() is m.leases
