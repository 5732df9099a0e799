"""The Dramatiq peer: a no-op actor on a Redis broker, under the benchmark's namespace.

The actor counts itself in Redis (one INCR, bench/counter.py) so the benchmark can see the
last one finish.
"""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from bench.counter import count

PREFIX = os.environ.get("BENCH_PREFIX", "bench:dramatiq:")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")

broker = RedisBroker(url=REDIS_URL, namespace=PREFIX.rstrip(":"))
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name="bench")
def noop() -> None:
    count(REDIS_URL, f"{PREFIX}done")
