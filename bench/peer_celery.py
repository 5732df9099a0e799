"""The Celery peer: a no-op task on a Redis broker, under the benchmark's key prefix.

The task counts itself in Redis (one INCR, bench/counter.py) so the benchmark can see the
last one finish.
"""

from __future__ import annotations

import os

from celery import Celery

from bench.counter import count

PREFIX = os.environ.get("BENCH_PREFIX", "bench:celery:")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")

app = Celery("bench", broker=REDIS_URL)
app.conf.update(
    broker_transport_options={"global_keyprefix": PREFIX},
    task_ignore_result=True,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)


@app.task(name="noop")
def noop() -> None:
    count(REDIS_URL, f"{PREFIX}done")
