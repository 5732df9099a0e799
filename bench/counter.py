"""The work every system's no-op task does in the benchmark: one Redis INCR, so the
benchmark can tell how many ran and when the last one finished.

Each thread has a connection of its own. Through one shared pool an INCR cost 70 us of CPU
from one thread, 170 us from 8 and 250 us from 128 (the pool's lock and the GIL hand-offs
around it); through its own connection 50, 90 and 130 us (docs/benchmarks.md). The same
helper serves our handler and the peers' tasks, so each system pays the same for it.
"""

from __future__ import annotations

import threading

import redis

_local = threading.local()


def count(url: str, key: str) -> None:
    """INCR `key` on the Redis at `url`, over this thread's own connection."""
    client: redis.Redis | None = getattr(_local, "client", None)
    if client is None:
        client = _local.client = redis.Redis.from_url(
            url, single_connection_client=True, socket_connect_timeout=5
        )
    client.incr(key)
