"""Reading metrics as Prometheus would: the samples of the API's `/metrics` and of a
worker's `WorkerMetrics`, by name and labels."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.integration.harness import System, wait_until
from workers.metrics import WorkerMetrics

P = "gpu_orchestrator_"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def api(system: System) -> Samples:
    response = system.client.get("/metrics")
    assert response.status_code == 200
    return parse(response.text)


def of(metrics: WorkerMetrics) -> Samples:
    return parse(metrics.render().decode())


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """The sample `gpu_orchestrator_<name>` with exactly these labels; None if absent."""
    return samples.get((P + name, tuple(sorted(labels.items()))))


def total(samples: Samples, name: str) -> float:
    """The sum of a family's samples over all their labels."""
    return sum(v for (n, _), v in samples.items() if n == P + name)


def settled(metrics: WorkerMetrics, concurrency: int) -> Samples:
    """The worker's samples once every slot is idle again: each hook has run by then."""
    return wait_until(  # type: ignore[no-any-return]
        lambda: (
            (s := of(metrics))
            and value(s, "worker_slots", state="idle") == concurrency
            and value(s, "worker_jobs_running") == 0
            and s
        ),
        10,
        "the worker's slots to be idle",
    )
