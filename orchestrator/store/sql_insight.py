"""The insight side of `SqlStore`: a job's place in its queue, queue statistics, and
re-prioritising a waiting job. Every query is bounded by an index or a limit."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from orchestrator.errors import Conflict, JobNotFound
from orchestrator.jobs import ACTIVE_STATUSES, CLAIMABLE_STATUSES, Job, JobStatus, Priority
from orchestrator.leases import Lease
from orchestrator.queue_order import UsageSample
from orchestrator.store.codec import loads
from orchestrator.store.insight_base import QueuePlace, QueueStats
from orchestrator.store.lease_rows import lease_from_row
from orchestrator.store.sql_base import SqlBase
from orchestrator.store.sql_usage import usage_samples
from orchestrator.store.tables import job_events, jobs, leases

S = JobStatus
# A job's place counts at most this many jobs ahead of it (then says "at least").
MAX_AHEAD = 10_000
# Waits are measured over at most this many of the newest jobs of a type in the window.
WAIT_SAMPLE = 10_000
FINISHED = (S.DONE.value, S.DEAD_LETTER.value, S.CANCELLED.value)
# Statuses of a job that may not have started yet (a `failed` one has run an attempt).
WAITING_STATUSES = (S.PENDING.value, S.CLAIMED.value)
# The oldest waiting job is looked for among this many of the oldest of each such status.
OLDEST_SAMPLE = 50


def _first_start() -> Any:
    """When the job first started running (its first `started` event), or NULL."""
    return (
        sa.select(sa.func.min(job_events.c.at))
        .where(job_events.c.job_id == jobs.c.id, job_events.c.event == "started")
        .scalar_subquery()
    )


def _submitted_detail() -> Any:
    """Its `submitted` event's detail, which holds `available_at` when it was delayed."""
    return (
        sa.select(job_events.c.detail)
        .where(job_events.c.job_id == jobs.c.id, job_events.c.event == "submitted")
        .order_by(job_events.c.id)
        .limit(1)
        .scalar_subquery()
    )


def _due(created: datetime, detail: str | None) -> datetime:
    """When the job was due: its `run_at` (a delayed submit), else its submit time."""
    loaded = loads(detail) if detail else None
    at = loaded.get("available_at") if isinstance(loaded, dict) else None
    if isinstance(at, str):
        try:
            return max(created, datetime.fromisoformat(at).replace(tzinfo=None))
        except ValueError:
            pass
    return created


class SqlInsight(SqlBase):
    def queue_place(self, job: Job, now: datetime) -> QueuePlace:
        mine = sa.select(jobs.c.published_at).where(jobs.c.id == job.id)
        with self._tx(write=False) as conn:
            published_at = conn.execute(mine).scalar()
            if published_at is None:
                return QueuePlace(published=False)
            # A worker reads every band of a type at once and runs the most urgent first;
            # within a band a stream is first in, first out: published earlier is ahead.
            same_band_earlier = sa.and_(
                jobs.c.priority == int(job.priority),
                sa.or_(
                    jobs.c.published_at < published_at,
                    sa.and_(jobs.c.published_at == published_at, jobs.c.id < job.id),
                ),
            )
            # Counted up to a bound, most urgent first: a huge backlog costs no more.
            rows = (
                sa.select(jobs.c.priority)
                .where(
                    jobs.c.type == job.type,
                    jobs.c.status.in_(CLAIMABLE_STATUSES),
                    jobs.c.available_at <= now,
                    jobs.c.published_at.is_not(None),
                    jobs.c.id != job.id,
                    sa.or_(jobs.c.priority < int(job.priority), same_band_earlier),
                )
                .order_by(jobs.c.priority)
                .limit(MAX_AHEAD + 1)
                .subquery()
            )
            query = sa.select(rows.c.priority, sa.func.count()).group_by(rows.c.priority)
            ahead = {Priority(p): int(n) for p, n in conn.execute(query)}
        if sum(ahead.values()) > MAX_AHEAD:
            last = max(ahead)
            ahead[last] -= 1
            return QueuePlace(published=True, ahead=ahead, capped=True)
        return QueuePlace(published=True, ahead=ahead)

    def job_leases(self, job_id: str, limit: int = 5) -> list[Lease]:
        query = (
            sa.select(leases)
            .where(leases.c.job_id == job_id)
            .order_by(leases.c.created_at.desc())
            .limit(limit)
        )
        with self._tx(write=False) as conn:
            return [lease_from_row(r._mapping) for r in conn.execute(query)]

    def owner_usage(self, owners: Collection[str], since: datetime) -> list[UsageSample]:
        with self._tx(write=False) as conn:
            return usage_samples(conn, owners, since)

    def queue_statistics(
        self, now: datetime, since: datetime, job_type: str | None = None
    ) -> list[QueueStats]:
        def typed(query: Any) -> Any:
            return query if job_type is None else query.where(jobs.c.type == job_type)

        pending: dict[str, dict[Priority, int]] = {}
        running: dict[str, int] = {}
        outcomes: dict[str, dict[str, int]] = {}
        last_hour: dict[str, int] = {}
        with self._tx(write=False) as conn:
            depth = typed(
                sa.select(jobs.c.type, jobs.c.priority, sa.func.count())
                .where(jobs.c.status.in_(CLAIMABLE_STATUSES))
                .group_by(jobs.c.type, jobs.c.priority)
            )
            for t, p, n in conn.execute(depth):
                pending.setdefault(t, {})[Priority(p)] = int(n)
            active = typed(
                sa.select(jobs.c.type, sa.func.count())
                .where(jobs.c.status.in_(ACTIVE_STATUSES))
                .group_by(jobs.c.type)
            )
            running = {t: int(n) for t, n in conn.execute(active)}
            ended = typed(
                sa.select(jobs.c.type, jobs.c.status, sa.func.count())
                .where(jobs.c.status.in_(FINISHED), jobs.c.finished_at >= since)
                .group_by(jobs.c.type, jobs.c.status)
            )
            for t, s, n in conn.execute(ended):
                outcomes.setdefault(t, {})[s] = int(n)
            hour = typed(
                sa.select(jobs.c.type, sa.func.count())
                .where(jobs.c.status.in_(FINISHED), jobs.c.finished_at >= now - timedelta(hours=1))
                .group_by(jobs.c.type)
            )
            last_hour = {t: int(n) for t, n in conn.execute(hour)}
            types = sorted({*pending, *running, *outcomes} | ({job_type} if job_type else set()))
            waits = {t: self._waits(conn, t, since, now) for t in types}
            oldest = {t: self._oldest_wait(conn, t, now) for t in types}
        return [
            QueueStats(
                type=t,
                pending=pending.get(t, {}),
                running=running.get(t, 0),
                waits_s=waits[t][0],
                waiting_s=waits[t][1],
                oldest_wait_s=oldest[t],
                finished_last_hour=last_hour.get(t, 0),
                done=outcomes.get(t, {}).get(S.DONE.value, 0),
                dead_letter=outcomes.get(t, {}).get(S.DEAD_LETTER.value, 0),
                cancelled=outcomes.get(t, {}).get(S.CANCELLED.value, 0),
            )
            for t in types
        ]

    @staticmethod
    def _waits(
        conn: sa.Connection, job_type: str, since: datetime, now: datetime
    ) -> tuple[list[float], list[float]]:
        """Due to first start of the newest jobs of the type submitted since `since`, and
        the wait so far of those among them that are due and have not started yet. The
        start, not the claim: a GPU job is claimed, and given back while no lease comes,
        perhaps many times before it runs."""
        query = (
            sa.select(jobs.c.created_at, jobs.c.status, _submitted_detail(), _first_start())
            .where(jobs.c.created_at >= since, jobs.c.type == job_type)
            .order_by(jobs.c.created_at.desc())
            .limit(WAIT_SAMPLE)
        )
        waits: list[float] = []
        waiting: list[float] = []
        for created, status, detail, started in conn.execute(query):
            due = _due(created, detail)
            if started is not None:
                waits.append(max(0.0, (started - due).total_seconds()))
            elif status in WAITING_STATUSES and due <= now:
                waiting.append((now - due).total_seconds())
        return waits, waiting

    @staticmethod
    def _oldest_wait(conn: sa.Connection, job_type: str, now: datetime) -> float | None:
        """The longest wait so far of a job of the type that has never started, whenever it
        was submitted: the oldest few waiting jobs of each status (ids are time-ordered, so
        this is a short range of the (status, type, id) index)."""
        oldest: float | None = None
        for status in WAITING_STATUSES:
            query = (
                sa.select(jobs.c.created_at, _submitted_detail(), _first_start())
                .where(jobs.c.status == status, jobs.c.type == job_type)
                .order_by(jobs.c.id)
                .limit(OLDEST_SAMPLE)
            )
            for created, detail, started in conn.execute(query):
                due = _due(created, detail)
                if started is None and due <= now:
                    wait = (now - due).total_seconds()
                    oldest = wait if oldest is None else max(oldest, wait)
        return oldest

    def reprioritise_job(
        self, job_id: str, priority: Priority, now: datetime, actor: str
    ) -> tuple[Job, bool]:
        with self._tx(write=True) as conn:
            row = self._locked_job(conn, job_id)
            if row is None:
                raise JobNotFound(f"no job {job_id}", job_id=job_id)
            if row["status"] not in CLAIMABLE_STATUSES:
                raise Conflict(
                    f"job {job_id} is {row['status']}: only a waiting job changes band",
                    status=row["status"],
                )
            before = Priority(row["priority"])
            if before is priority:
                return self._reload(conn, job_id), False
            due = row["available_at"] <= now
            # The message in the old band now fails its claim (the claim matches the band);
            # a due job is published afresh by the caller, a later one by the scheduler.
            self._set(
                conn,
                job_id,
                {
                    "priority": int(priority),
                    "published_at": now if due else None,
                    "updated_at": now,
                },
            )
            self._event(
                conn,
                job_id,
                now,
                "reprioritised",
                status=S(row["status"]),
                attempt=row["attempts"],
                actor=actor,
                detail={"from": before.label, "to": priority.label},
            )
            return self._reload(conn, job_id), True
