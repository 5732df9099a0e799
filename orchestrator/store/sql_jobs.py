"""The submitting and reading side of `SqlStore`: jobs in, messages out, jobs read."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from orchestrator.errors import (
    Conflict,
    IdempotencyConflict,
    InvalidRequest,
    JobFinished,
    JobNotFound,
    StoreUnavailable,
)
from orchestrator.ids import new_job_id
from orchestrator.jobs import (
    ACTIVE_STATUSES,
    CLAIMABLE_STATUSES,
    Dispatch,
    Job,
    JobEvent,
    JobSpec,
    JobStatus,
    Priority,
)
from orchestrator.store import dialect
from orchestrator.store.base import JobPage, Submitted
from orchestrator.store.codec import dumps, event_from_row, job_from_row
from orchestrator.store.sql_base import _JOB_BY_ID, SqlBase
from orchestrator.store.tables import job_events, jobs, state

S = JobStatus


class SqlJobs(SqlBase):
    # -- submit -------------------------------------------------------------------------

    def submit_jobs(self, specs: Sequence[JobSpec], now: datetime) -> list[Submitted]:
        keys = [(s.owner, s.idempotency_key) for s in specs if s.idempotency_key]
        if len(keys) != len(set(keys)):
            raise InvalidRequest("the same idempotency_key appears twice in one batch")
        try:
            return self._insert_jobs(specs, now)
        except sa.exc.IntegrityError as exc:
            if not dialect.is_duplicate_key(exc):
                raise
            # A concurrent submit took one of our idempotency keys: read it back and compare.
            return self._insert_jobs(specs, now)

    def _insert_jobs(self, specs: Sequence[JobSpec], now: datetime) -> list[Submitted]:
        with self._tx(write=True) as conn:
            existing = self._existing_by_key(conn, specs)
            results: list[Submitted] = []
            rows: list[dict[str, Any]] = []
            for spec in specs:
                found = existing.get((spec.owner, spec.idempotency_key or ""))
                if found is not None:
                    if found["request_hash"] != spec.request_hash:
                        raise IdempotencyConflict(
                            "idempotency_key was used for a different request",
                            job_id=found["id"],
                        )
                    results.append(Submitted(job_from_row(found), created=False))
                    continue
                row = _new_job_row(new_job_id(), spec, now)
                rows.append(row)
                results.append(Submitted(job_from_row(row), created=True))
            if rows:
                dialect.insert_rows(conn, jobs, rows)
                dialect.insert_rows(conn, job_events, [_submitted_event(row, now) for row in rows])
        return results

    def _existing_by_key(
        self, conn: Connection, specs: Sequence[JobSpec]
    ) -> dict[tuple[str, str], Mapping[Any, Any]]:
        by_owner: dict[str, list[str]] = {}
        for spec in specs:
            if spec.idempotency_key:
                by_owner.setdefault(spec.owner, []).append(spec.idempotency_key)
        found: dict[tuple[str, str], Mapping[Any, Any]] = {}
        for owner, keys in by_owner.items():
            query = sa.select(jobs).where(jobs.c.owner == owner, jobs.c.idempotency_key.in_(keys))
            for row in conn.execute(query):
                found[(owner, row.idempotency_key)] = row._mapping
        return found

    # -- publishing ---------------------------------------------------------------------

    def mark_unpublished(self, job_ids: Sequence[str]) -> None:
        if not job_ids:
            return
        with self._tx(write=True) as conn:
            conn.execute(jobs.update().where(jobs.c.id.in_(job_ids)).values(published_at=None))

    def due_dispatches(self, now: datetime, limit: int) -> list[Dispatch]:
        query = (
            sa.select(jobs.c.id, jobs.c.type, jobs.c.priority, jobs.c.attempts)
            .where(
                jobs.c.published_at.is_(None),
                jobs.c.available_at <= now,
                jobs.c.status.in_(CLAIMABLE_STATUSES),
            )
            .order_by(jobs.c.priority, jobs.c.available_at)
            .limit(limit)
        )
        with self._tx(write=False) as conn:
            return [
                Dispatch(r.id, r.type, Priority(r.priority), r.attempts + 1)
                for r in conn.execute(query)
            ]

    def mark_published(self, dispatches: Sequence[Dispatch], now: datetime) -> None:
        if not dispatches:
            return
        by_attempt: dict[int, list[str]] = {}
        for d in dispatches:
            by_attempt.setdefault(d.attempt, []).append(d.job_id)
        with self._tx(write=True) as conn:
            for attempt, ids in by_attempt.items():
                conn.execute(
                    jobs.update()
                    .where(
                        jobs.c.id.in_(ids),
                        jobs.c.status.in_(CLAIMABLE_STATUSES),
                        jobs.c.attempts == attempt - 1,
                    )
                    .values(published_at=now)
                )

    def waiting_published_before(
        self, cutoff: datetime, limit: int, after: tuple[datetime, str] | None = None
    ) -> tuple[list[Dispatch], tuple[datetime, str] | None]:
        query = (
            sa.select(jobs.c.id, jobs.c.type, jobs.c.priority, jobs.c.attempts, jobs.c.published_at)
            .where(jobs.c.status.in_(CLAIMABLE_STATUSES), jobs.c.published_at < cutoff)
            .order_by(jobs.c.published_at, jobs.c.id)
            .limit(limit)
        )
        if after is not None:
            query = query.where(sa.tuple_(jobs.c.published_at, jobs.c.id) > sa.tuple_(*after))
        with self._tx(write=False) as conn:
            rows = conn.execute(query).all()
        page = [Dispatch(r.id, r.type, Priority(r.priority), r.attempts + 1) for r in rows]
        cursor = (rows[-1].published_at, rows[-1].id) if len(rows) == limit else None
        return page, cursor

    def unpublish_waiting(self) -> int:
        with self._tx(write=True) as conn:
            return int(
                conn.execute(
                    jobs.update()
                    .where(jobs.c.status.in_(CLAIMABLE_STATUSES), jobs.c.published_at.is_not(None))
                    .values(published_at=None)
                ).rowcount
            )

    def queue_depths(self) -> list[tuple[str, str, Priority, int]]:
        query = (
            sa.select(jobs.c.type, jobs.c.status, jobs.c.priority, sa.func.count())
            .where(jobs.c.status.in_((*CLAIMABLE_STATUSES, *ACTIVE_STATUSES, S.DEAD_LETTER.value)))
            .group_by(jobs.c.type, jobs.c.status, jobs.c.priority)
        )
        with self._tx(write=False) as conn:
            return [(t, s, Priority(p), int(n)) for t, s, p, n in conn.execute(query)]

    def check_schema(self) -> None:
        from orchestrator import migrate

        try:
            migrate.check_at_head(self.engine)
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
            raise StoreUnavailable(f"database error: {exc.orig or exc}") from exc

    def get_state(self, name: str) -> str | None:
        with self._tx(write=False) as conn:
            value = conn.execute(sa.select(state.c.value).where(state.c.name == name)).scalar()
        return None if value is None else str(value)

    def put_state(self, name: str, value: str, now: datetime) -> None:
        row = {"name": name, "value": value, "updated_at": now}
        with self._tx(write=True) as conn:
            conn.execute(dialect.upsert(self.engine, state, row, key="name"))

    def replay_dead_letter(self, job_id: str, now: datetime, actor: str) -> Job:
        with self._tx(write=True) as conn:
            row = self._locked_job(conn, job_id)
            if row is None:
                raise JobNotFound(f"no job {job_id}", job_id=job_id)
            if row["status"] != S.DEAD_LETTER.value:
                raise Conflict(
                    f"job {job_id} is {row['status']}, not dead_letter", status=row["status"]
                )
            # A fresh attempt budget; the last error stays visible until the next outcome.
            self._set(
                conn,
                job_id,
                {
                    "status": S.PENDING.value,
                    "attempts": 0,
                    "available_at": now,
                    "published_at": None,
                    "finished_at": None,
                    "claim_token": None,
                    "worker_id": None,
                    "heartbeat_at": None,
                    "cancel_requested": False,
                    "updated_at": now,
                },
            )
            self._event(
                conn,
                job_id,
                now,
                "replayed",
                status=S.PENDING,
                attempt=0,
                actor=actor,
                detail={"previous_attempts": row["attempts"]},
            )
            return self._reload(conn, job_id)

    def job_attempts(self, job_ids: Sequence[str]) -> dict[str, tuple[JobStatus, int]]:
        """Status and attempts started, by job id (missing ids are absent)."""
        if not job_ids:
            return {}
        query = sa.select(jobs.c.id, jobs.c.status, jobs.c.attempts).where(jobs.c.id.in_(job_ids))
        with self._tx(write=False) as conn:
            return {r.id: (S(r.status), r.attempts) for r in conn.execute(query)}

    # -- reading ------------------------------------------------------------------------

    def get_job(self, job_id: str) -> Job | None:
        with self._tx(write=False) as conn:
            # Built once (see `sql_base._JOB_BY_ID`): every GET /jobs/{id} and poll runs it.
            row = conn.execute(_JOB_BY_ID, {"job_id": job_id}).first()
        return None if row is None else job_from_row(row._mapping)

    def list_jobs(
        self,
        *,
        status: str | None,
        type: str | None,
        limit: int,
        cursor: str | None,
        owner: str | None = None,
    ) -> JobPage:
        query = sa.select(jobs).order_by(jobs.c.id.desc()).limit(limit + 1)
        if owner is not None:
            query = query.where(jobs.c.owner == owner)
        if status:
            query = query.where(jobs.c.status == status)
        if type:
            query = query.where(jobs.c.type == type)
        if cursor:
            query = query.where(jobs.c.id < cursor)
        with self._tx(write=False) as conn:
            found = [job_from_row(r._mapping) for r in conn.execute(query)]
        page = found[:limit]
        next_cursor = page[-1].id if len(found) > limit else None
        return JobPage(page, next_cursor)

    def job_events(self, job_id: str) -> list[JobEvent]:
        query = sa.select(job_events).where(job_events.c.job_id == job_id).order_by(job_events.c.id)
        with self._tx(write=False) as conn:
            return [event_from_row(r._mapping) for r in conn.execute(query)]

    # -- cancel -------------------------------------------------------------------------

    def cancel_job(self, job_id: str, now: datetime, actor: str) -> Job:
        with self._tx(write=True) as conn:
            row = self._locked_job(conn, job_id)
            if row is None:
                raise JobNotFound(f"no job {job_id}", job_id=job_id)
            status = S(row["status"])
            if status in (S.DONE, S.DEAD_LETTER, S.CANCELLED):
                raise JobFinished(f"job {job_id} is already {status}", status=status.value)
            if status.value in CLAIMABLE_STATUSES:
                # published_at set: a delayed or retrying job leaves the scheduler's index.
                values = {
                    "status": S.CANCELLED.value,
                    "finished_at": now,
                    "updated_at": now,
                    "published_at": now,
                }
                self._set(conn, job_id, values)
                self._event(
                    conn,
                    job_id,
                    now,
                    "cancelled",
                    status=S.CANCELLED,
                    attempt=row["attempts"],
                    actor=actor,
                )
            elif not row["cancel_requested"]:
                self._set(conn, job_id, {"cancel_requested": True, "updated_at": now})
                self._event(
                    conn,
                    job_id,
                    now,
                    "cancel_requested",
                    status=status,
                    attempt=row["attempts"],
                    actor=actor,
                )
            return self._reload(conn, job_id)


def _new_job_row(job_id: str, spec: JobSpec, now: datetime) -> dict[str, Any]:
    due = spec.available_at <= now
    return {
        "id": job_id,
        "type": spec.type,
        "owner": spec.owner,
        "status": S.PENDING.value,
        "priority": int(spec.priority),
        "payload": dumps(spec.payload),
        "attempts": 0,
        "max_attempts": spec.max_attempts,
        "timeout_s": spec.timeout_s,
        "idempotency_key": spec.idempotency_key,
        "request_hash": spec.request_hash,
        "available_at": spec.available_at,
        # A due job is published by the submitter right after this commits; a later one by
        # the scheduler when it falls due.
        "published_at": now if due else None,
        "created_at": now,
        "updated_at": now,
        "started_at": None,
        "finished_at": None,
        "heartbeat_at": None,
        "worker_id": None,
        "claim_token": None,
        "cancel_requested": False,
        "result": None,
        "error": None,
        "progress": None,
        "gpu": dumps(spec.gpu.as_dict()) if spec.gpu else None,
    }


def _submitted_event(row: Mapping[Any, Any], now: datetime) -> dict[str, Any]:
    detail = {"priority": Priority(row["priority"]).label}
    if row["published_at"] is None:
        detail["available_at"] = row["available_at"].isoformat()
    return {
        "job_id": row["id"],
        "at": now,
        "event": "submitted",
        "status": S.PENDING.value,
        "attempt": 0,
        "actor": row["owner"],
        "detail": dumps(detail),
    }
