"""The order in which waiting lease requests are offered devices, per admission policy.

Pure functions (no I/O, time passed in) used by `orchestrator.admission.serve_queue`:

- `fifo`: arrival alone (`queued_at`, then creation); bands and ageing are ignored.
- `priority`: effective band (a request moves up one band per `ageing_s` waited), then
  arrival.
- `shortest_first`: effective band, then `estimated_duration_s` (requests without one after
  those with one), then arrival.
- `fair_share`: effective band, then the owner's decayed GPU-seconds divided by its share,
  then arrival. Usage is charged as grants are made within one pass, so a pass that frees
  several devices spreads them over owners instead of giving them all to the lowest.

Bands still dominate under `shortest_first` and `fair_share`: a band is an explicit
statement of urgency (a critical job must not wait behind someone's fair turn), and ageing
already lifts a long-waiting request into the next band, so nobody starves. See
docs/scheduling.md.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from orchestrator.leases import AdmissionPolicy, FairShare, Lease, QueueOrder

INFINITE = math.inf


@dataclass(frozen=True)
class UsageSample:
    """GPU-seconds an owner used, ending at `ended_at` (a finished lease's usage row)."""

    owner: str
    gpu_seconds: float
    ended_at: datetime


def band_of(lease: Lease, policy: AdmissionPolicy, now: datetime) -> int:
    """The request's band, raised one per `ageing_s` it has waited."""
    waited = max(0.0, (now - lease.queued_at).total_seconds())
    return max(0, int(lease.priority) - int(waited // policy.ageing_s))


def arrival(lease: Lease) -> tuple[datetime, datetime, str]:
    return (lease.queued_at, lease.created_at, lease.token)


def static_key(lease: Lease, policy: AdmissionPolicy, now: datetime) -> tuple[Any, ...]:
    """The sort key of a request under every order but `fair_share` (whose key changes as
    grants are made): see the module docstring."""
    if policy.order is QueueOrder.FIFO:
        return (0, *arrival(lease))
    band = band_of(lease, policy, now)
    if policy.order is QueueOrder.SHORTEST_FIRST:
        duration = lease.estimated_duration_s
        return (band, INFINITE if duration is None else duration, *arrival(lease))
    return (band, *arrival(lease))


def decayed_usage(
    samples: Iterable[UsageSample], active: Iterable[Lease], now: datetime, fair: FairShare
) -> dict[str, float]:
    """Each owner's recent GPU-seconds: finished usage weighted by 2^(-age / half_life)
    (age: since it ended; none older than the window), plus the time its active leases
    have held their devices so far, undecayed (they hold them now)."""
    usage: dict[str, float] = {}
    for s in samples:
        age = max(0.0, (now - s.ended_at).total_seconds())
        if age > fair.window_s:
            continue
        weight = 0.5 ** (age / fair.half_life_s)
        usage[s.owner] = usage.get(s.owner, 0.0) + s.gpu_seconds * weight
    for lease in active:
        if lease.granted_at is None:
            continue
        held = max(0.0, (now - lease.granted_at).total_seconds()) * max(1, len(lease.devices))
        usage[lease.owner] = usage.get(lease.owner, 0.0) + held
    return usage


class Turns:
    """The waiting requests in policy order, one at a time: iterate, and `charge` each
    grant (so `fair_share` counts it before choosing the next)."""

    def __init__(
        self,
        waiting: Sequence[Lease],
        policy: AdmissionPolicy,
        now: datetime,
        usage: Mapping[str, float] | None = None,
    ) -> None:
        self.policy = policy
        self.now = now
        self.usage = dict(usage or {})
        self._waiting = waiting

    def charge(self, lease: Lease, gpu_count: int) -> None:
        """A grant, charged to its owner at its estimated (else assumed) duration."""
        fair = self.policy.fair_share
        duration = lease.estimated_duration_s or fair.assumed_duration_s
        self.usage[lease.owner] = self.usage.get(lease.owner, 0.0) + duration * gpu_count

    def normalised(self, owner: str) -> float:
        """The owner's usage so far divided by its share: lower goes first."""
        return self.usage.get(owner, 0.0) / self.policy.fair_share.share_of(owner)

    def __iter__(self) -> Iterator[Lease]:
        policy, now = self.policy, self.now
        if policy.order is not QueueOrder.FAIR_SHARE:
            yield from sorted(self._waiting, key=lambda w: static_key(w, policy, now))
            return
        # Each owner's requests in band-then-arrival order; the next turn is the best head.
        queues: dict[str, list[Lease]] = {}
        for lease in sorted(self._waiting, key=lambda w: (band_of(w, policy, now), *arrival(w))):
            queues.setdefault(lease.owner, []).append(lease)
        heads = dict.fromkeys(queues, 0)
        while heads:

            def key(owner: str) -> tuple[Any, ...]:
                head = queues[owner][heads[owner]]
                return (band_of(head, policy, now), self.normalised(owner), *arrival(head))

            owner = min(heads, key=key)
            lease = queues[owner][heads[owner]]
            heads[owner] += 1
            if heads[owner] == len(queues[owner]):
                del heads[owner]
            yield lease
