"""The accounting side of `SqlStore`: usage rows, written where a lease ends, and read.

`record_usage` runs inside the transaction whose conditional UPDATE ended the lease (its
rowcount was 1), so a lease is counted exactly once even when two leaders overlap; the
table's primary key (the lease token) would refuse a second row anyway.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from orchestrator.leases import AdmissionPolicy, Lease, QueueOrder
from orchestrator.queue_order import UsageSample, decayed_usage
from orchestrator.store.sql_base import SqlBase
from orchestrator.store.tables import usage
from orchestrator.store.usage_base import UsageGroup, UsageQuery, UsageRecord, UsageTotal


def record_usage(conn: Connection, lease: Lease, ended_at: datetime, ended: str) -> None:
    """Book what an active lease held: from its grant to `ended_at` on each device. A lease
    never granted holds nothing and is not booked."""
    if lease.granted_at is None:
        return
    seconds = max(0.0, (ended_at - lease.granted_at).total_seconds())
    count = max(1, len(lease.devices))
    peak = lease.peak_vram_mb
    conn.execute(
        usage.insert().values(
            lease_token=lease.token,
            owner=lease.owner,
            agent=lease.agent,
            type=lease.operation,
            job_id=lease.job_id,
            attempt=lease.attempt,
            node=lease.node,
            gpu_count=count,
            est_vram_mb=lease.est_vram_mb,
            peak_vram_mb=peak,
            started_at=lease.granted_at,
            ended_at=ended_at,
            ended=ended,
            gpu_seconds=seconds * count,
            vram_mb_seconds_est=float(lease.est_vram_mb) * seconds * count,
            vram_mb_seconds_peak=None if peak is None else float(peak) * seconds * count,
        )
    )


def fair_share_usage(
    conn: Connection,
    policy: AdmissionPolicy,
    waiting: Sequence[Lease],
    active: Sequence[Lease],
    now: datetime,
) -> dict[str, float] | None:
    """The waiting owners' decayed GPU-seconds, when the policy orders by them (and more
    than one owner waits: otherwise the order cannot change); else None."""
    owners = {w.owner for w in waiting}
    if policy.order is not QueueOrder.FAIR_SHARE or len(owners) < 2:
        return None
    fair = policy.fair_share
    since = now - timedelta(seconds=fair.window_s)
    bucket_s = bucket_s_for(fair.window_s, fair.half_life_s)
    samples = usage_samples(conn, owners, since, bucket_s)
    return decayed_usage(samples, active, now, fair)


# Fair share sums usage in SQL per owner and time bucket, so an admission pass reads at most
# owners x MAX_USAGE_BUCKETS rows however many leases ended within the window.
MAX_USAGE_BUCKETS = 128
DEFAULT_BUCKET_S = 86400 / MAX_USAGE_BUCKETS  # the default window over the most buckets


def bucket_s_for(window_s: float, half_life_s: float) -> float:
    """Buckets of a sixteenth of the half-life (the decay over half of one is about 2 %),
    or wider when the window would need more than `MAX_USAGE_BUCKETS` of them."""
    return max(window_s / MAX_USAGE_BUCKETS, half_life_s / 16)


def usage_samples(
    conn: Connection,
    owners: Collection[str],
    since: datetime,
    bucket_s: float = DEFAULT_BUCKET_S,
) -> list[UsageSample]:
    """The finished usage of these owners that ended at or after `since` (fair share),
    summed per owner in buckets of `bucket_s` from `since` (the last one open-ended, at most
    `MAX_USAGE_BUCKETS`): one sample per owner and bucket, dated midway between the
    bucket's first and last end, so decaying it per bucket is off by at most half a
    bucket's decay (and exact for a bucket of one lease). A portable CASE over bound
    timestamps, no dialect's date arithmetic."""
    if not owners:
        return []
    bounds = [since + timedelta(seconds=bucket_s * k) for k in range(1, MAX_USAGE_BUCKETS)]
    whens = [(usage.c.ended_at < bound, k) for k, bound in enumerate(bounds)]
    bucket = sa.case(*whens, else_=len(bounds)).label("bucket")
    query = (
        sa.select(
            usage.c.owner,
            bucket,
            sa.func.sum(usage.c.gpu_seconds).label("gpu"),
            sa.func.min(usage.c.ended_at).label("first"),
            sa.func.max(usage.c.ended_at).label("last"),
        )
        .where(usage.c.owner.in_(sorted(owners)), usage.c.ended_at >= since)
        .group_by(usage.c.owner, bucket)
    )
    return [
        UsageSample(r.owner, float(r.gpu), r.first + (r.last - r.first) / 2)
        for r in conn.execute(query)
    ]


# The metrics' `type` of a lease that is not a job's (an agent's operation is free text).
OTHER_TYPE = "other"

_GROUP_COLUMNS = {
    UsageGroup.OWNER: usage.c.owner,
    UsageGroup.AGENT: usage.c.agent,
    UsageGroup.TYPE: usage.c.type,
    UsageGroup.NODE: usage.c.node,
}


class SqlUsage(SqlBase):
    def usage_totals(self, query: UsageQuery) -> list[UsageTotal]:
        key = _GROUP_COLUMNS[query.group_by]
        measured = usage.c.vram_mb_seconds_peak.is_not(None)
        select = sa.select(
            key.label("key"),
            sa.func.count().label("leases"),
            sa.func.coalesce(sa.func.sum(usage.c.gpu_seconds), 0.0).label("gpu"),
            sa.func.coalesce(sa.func.sum(usage.c.vram_mb_seconds_est), 0.0).label("est"),
            sa.func.coalesce(sa.func.sum(usage.c.vram_mb_seconds_peak), 0.0).label("peak"),
            sa.func.coalesce(sa.func.sum(sa.case((measured, 1), else_=0)), 0).label("measured"),
        ).group_by(key)
        if query.owner is not None:
            select = select.where(usage.c.owner == query.owner)
        if query.agent is not None:
            select = select.where(usage.c.agent == query.agent)
        if query.type is not None:
            select = select.where(usage.c.type == query.type)
        if query.since is not None:
            select = select.where(usage.c.ended_at >= query.since)
        if query.until is not None:
            select = select.where(usage.c.ended_at < query.until)
        with self._tx(write=False) as conn:
            rows = conn.execute(select).all()
        totals = [
            UsageTotal(
                key=r.key,
                leases=int(r.leases),
                gpu_seconds=float(r.gpu),
                vram_mb_seconds_est=float(r.est),
                vram_mb_seconds_peak=float(r.peak),
                measured_leases=int(r.measured),
            )
            for r in rows
        ]
        return sorted(totals, key=lambda t: (-t.gpu_seconds, t.key or ""))

    def usage_of_job(self, job_id: str) -> list[UsageRecord]:
        query = sa.select(usage).where(usage.c.job_id == job_id).order_by(usage.c.started_at)
        with self._tx(write=False) as conn:
            return [_record_of(r._mapping) for r in conn.execute(query)]

    def usage_by_owner_type(self) -> list[tuple[str, str | None, float, float, float]]:
        # One GROUP BY over the (owner, type) index; the label values are bounded: a job's
        # lease has its job's type, any other lease's free-text operation counts as "other".
        query = sa.select(
            usage.c.owner,
            usage.c.type,
            usage.c.job_id.is_(None).label("agent_lease"),
            sa.func.sum(usage.c.gpu_seconds),
            sa.func.sum(usage.c.vram_mb_seconds_est),
            sa.func.coalesce(sa.func.sum(usage.c.vram_mb_seconds_peak), 0.0),
        ).group_by(usage.c.owner, usage.c.type, usage.c.job_id.is_(None))
        totals: dict[tuple[str, str | None], list[float]] = {}
        with self._tx(write=False) as conn:
            for r in conn.execute(query):
                key = (r[0], OTHER_TYPE if r[2] else r[1])
                sums = totals.setdefault(key, [0.0, 0.0, 0.0])
                for i in range(3):
                    sums[i] += float(r[3 + i] or 0.0)
        return [(owner, kind, s[0], s[1], s[2]) for (owner, kind), s in totals.items()]


def _record_of(row: Mapping[Any, Any]) -> UsageRecord:
    return UsageRecord(
        lease_token=row["lease_token"],
        owner=row["owner"],
        agent=row["agent"],
        type=row["type"],
        job_id=row["job_id"],
        attempt=row["attempt"],
        node=row["node"],
        gpu_count=row["gpu_count"],
        est_vram_mb=row["est_vram_mb"],
        peak_vram_mb=row["peak_vram_mb"],
        started_at=row["started_at"],
        ended_at=row["ended_at"],
        ended=row["ended"],
        gpu_seconds=row["gpu_seconds"],
        vram_mb_seconds_est=row["vram_mb_seconds_est"],
        vram_mb_seconds_peak=row["vram_mb_seconds_peak"],
    )
