"""`SubmitRateLimit`: a token bucket per owner, counting submitted jobs.

In memory, per API replica: N replicas behind a balancer let an owner submit N times the
rate. That bounds a runaway client cheaply (no shared state on the submit path); it is not a
billing quota.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

from orchestrator.clock import Clock
from orchestrator.errors import RateLimited

# An owner idle long enough for its bucket to be full again needs no entry: past this many
# owners the full ones are dropped, so the map stays the size of the active owners.
PRUNE_AT = 10_000


@dataclass
class _Bucket:
    tokens: float
    at: float  # clock seconds of the last refill


class SubmitRateLimit:
    def __init__(self, rate_per_s: float, burst: int, clock: Clock) -> None:
        self.rate = rate_per_s
        self.burst = max(burst, 1)
        self.clock = clock
        # Seconds since here: an epoch timestamp as a float loses the microseconds.
        self._origin = clock.now()
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def take(self, owner: str, jobs: int) -> None:
        """Count `jobs` submitted by `owner`, or raise `RateLimited` (nothing counted).

        A batch costs its full size: the settings keep the burst at least the largest batch
        (`submit_burst >= max_batch_size`), so every allowed batch can pass on a full bucket.
        """
        if not self.enabled or jobs <= 0:
            return
        now = (self.clock.now() - self._origin).total_seconds()
        cost = jobs
        with self._lock:
            bucket = self._buckets.get(owner)
            if bucket is None:
                if len(self._buckets) >= PRUNE_AT:
                    self._prune(now)
                bucket = self._buckets[owner] = _Bucket(float(self.burst), now)
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate)
            bucket.at = now
            if bucket.tokens >= cost - 1e-9:
                bucket.tokens -= cost
                return
            wait_s = (cost - bucket.tokens) / self.rate
        raise RateLimited(
            f"owner {owner!r} submits over {self.rate:g} jobs/s (burst {self.burst}): "
            f"retry in {wait_s:.2f}s",
            retry_after_s=max(1, math.ceil(wait_s)),
        )

    def _prune(self, now: float) -> None:
        full = [
            owner
            for owner, b in self._buckets.items()
            if b.tokens + (now - b.at) * self.rate >= self.burst
        ]
        for owner in full:
            del self._buckets[owner]
