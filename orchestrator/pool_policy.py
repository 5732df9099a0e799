"""The leader's pool policy: size the active pools to their work, within their bounds and
the fleet's cap, and notice workers that died.

One pass (run by the leader's engine with each reclaim pass, and by
`POST /control/pool-policy` on any replica):

1. Workers with no heartbeat for `visibility_timeout_s` become `lost` (only once the
   leadership has lasted a visibility timeout, as the reclaimer judges heartbeats).
2. Each active pool's `desired` is planned by `plan` (below) from the jobs of its types,
   and each change is a conditional update on the size it was planned from.
3. A draining pool with no live worker left becomes `stopped`.
4. About hourly, rows of workers stopped or lost more than a day ago are deleted.

Every write is conditional, so two leaders that overlap during a failover do no harm: the
second one's resize of a pool the first already resized matches no row.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta

from orchestrator.clock import Clock
from orchestrator.fleet import Demand, Pool, PoolActivity, PoolChange, PoolStatus
from orchestrator.settings import Settings
from orchestrator.store import Store

logger = logging.getLogger(__name__)

# Rows of stopped and lost workers are history for `GET /workers?all=true`, for a while.
WORKER_RETENTION_S = 86400.0
PRUNE_INTERVAL_S = 3600.0


@dataclass(frozen=True)
class Plan:
    """What a pass decided: resizes, bookkeeping, and how far over the cap the pools' warm
    minimums alone are (0 when within it)."""

    changes: list[PoolChange]
    activity: list[PoolActivity]
    over_cap: int = 0


@dataclass
class PolicyReport:
    resized: dict[str, int] = field(default_factory=dict)  # pool -> new desired
    lost_workers: list[str] = field(default_factory=list)
    stopped_pools: list[str] = field(default_factory=list)
    pruned_workers: int = 0

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def demand_of(pool: Pool, demand: Mapping[str, Demand]) -> Demand:
    total = Demand()
    for job_type in pool.job_types:
        total = total + demand.get(job_type, Demand())
    return total


def plan(
    pools: Sequence[Pool], demand: Mapping[str, Demand], now: datetime, max_total: int
) -> Plan:
    """Decide each active pool's size. The rules, in order:

    1. Clamp `desired` into [min_warm, max_workers].
    2. Idle: no job of its types waiting (due) or running since `idle_since()` for
       `idle_timeout_s`: down to `min_warm`.
    3. The cap: while the active pools want more than `max_total` in all, take workers from
       the pools with the fewest waiting jobs per worker first, never below `min_warm`.
    4. Demand: a pool whose types have jobs waiting asks for
       ceil((waiting + running) / concurrency) workers, at most `max_workers`; the headroom
       left under the cap goes to the pools with the most waiting jobs per worker first.

    A pool only grows for waiting jobs and only shrinks for idleness or the cap, so running
    jobs never lose their workers to a sibling's demand.
    """
    active = [p for p in pools if p.status is PoolStatus.ACTIVE]
    size: dict[str, int] = {}
    reason: dict[str, str] = {}
    wants: dict[str, int] = {}
    pressure: dict[str, float] = {}
    for p in active:
        d = demand_of(p, demand)
        size[p.name] = min(max(p.desired, p.min_warm), p.max_workers)
        if size[p.name] != p.desired:
            reason[p.name] = "clamped"
        if d.waiting:
            need = min(p.max_workers, math.ceil((d.waiting + d.running) / p.concurrency))
            if need > size[p.name]:
                wants[p.name] = need
        elif (
            not d.busy
            and size[p.name] > p.min_warm
            and now - p.idle_since() >= timedelta(seconds=p.idle_timeout_s)
        ):
            size[p.name] = p.min_warm
            reason[p.name] = "idle"
        pressure[p.name] = d.waiting / max(size[p.name], 1)

    excess = sum(size.values()) - max_total
    for p in sorted(active, key=lambda p: (pressure[p.name], p.name)):
        if excess <= 0:
            break
        cut = min(excess, size[p.name] - p.min_warm)
        if cut > 0:
            size[p.name] -= cut
            excess -= cut
            reason[p.name] = "total_cap"

    headroom = max_total - sum(size.values())
    for name in sorted(wants, key=lambda n: (-pressure[n], n)):
        grant = min(wants[name] - size[name], headroom)
        if grant > 0:
            size[name] += grant
            headroom -= grant
            reason[name] = "demand"

    changes = [
        PoolChange(p.name, p.desired, size[p.name], reason.get(p.name, "clamped"))
        for p in active
        if size[p.name] != p.desired
    ]
    activity = [
        PoolActivity(p.name, p.running, now if demand_of(p, demand).busy else None) for p in pools
    ]
    return Plan(changes, activity, over_cap=max(excess, 0))


class PoolPolicy:
    """One pass of the pool policy at a time (see the module docstring)."""

    def __init__(self, store: Store, settings: Settings, clock: Clock) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        self._next_prune: datetime | None = None
        self._warned_over_cap = False

    def run(self, *, judge_heartbeats: bool = True) -> PolicyReport:
        """One pass. Heartbeats are judged (lost workers, finished drains) only when
        `judge_heartbeats`: a leadership regained after an outage must let live workers
        heartbeat again first."""
        report = PolicyReport()
        now = self.clock.now()
        stale_before = now - timedelta(seconds=self.settings.visibility_timeout_s)
        if judge_heartbeats:
            report.lost_workers = self.store.mark_lost_workers(stale_before, now)
            if report.lost_workers:
                # Their models went with them (a graceful stop forgets its own).
                self.store.forget_warm(worker_ids=report.lost_workers)
            for worker_id in report.lost_workers:
                logger.warning(
                    "worker %s lost: no heartbeat within the visibility timeout",
                    worker_id,
                    extra={"event": "worker_lost", "worker": worker_id},
                )
        pools = self.store.list_pools(stale_before)
        if pools:
            self._size(pools, now, report)
        if judge_heartbeats:
            for p in pools:
                if p.status is PoolStatus.DRAINING and self.store.finish_drain(
                    p.name, now, stale_before
                ):
                    report.stopped_pools.append(p.name)
                    logger.info(
                        "pool %s drained: stopped",
                        p.name,
                        extra={"event": "pool_drained", "pool": p.name},
                    )
        if self._next_prune is None or now >= self._next_prune:
            self._next_prune = now + timedelta(seconds=PRUNE_INTERVAL_S)
            report.pruned_workers = self.store.prune_workers(
                now - timedelta(seconds=WORKER_RETENTION_S)
            )
        return report

    def _size(self, pools: list[Pool], now: datetime, report: PolicyReport) -> None:
        max_total = self.settings.pool_max_total_workers
        decided = plan(pools, self.store.job_demand(now), now, max_total)
        applied = set(self.store.apply_pool_changes(decided.changes, decided.activity, now))
        for change in decided.changes:
            if change.name not in applied:
                continue  # resized meanwhile (an operator, or an overlapping leader)
            report.resized[change.name] = change.desired
            logger.info(
                "pool %s: desired %d -> %d (%s)",
                change.name,
                change.expected_desired,
                change.desired,
                change.reason,
                extra={
                    "event": "pool_resized",
                    "pool": change.name,
                    "desired": change.desired,
                    "reason": change.reason,
                },
            )
        if decided.over_cap and not self._warned_over_cap:
            logger.warning(
                "the active pools' min_warm add up to %d more than pool_max_total_workers (%d)",
                decided.over_cap,
                max_total,
                extra={"event": "pool_cap_exceeded", "over": decided.over_cap},
            )
        self._warned_over_cap = bool(decided.over_cap)
