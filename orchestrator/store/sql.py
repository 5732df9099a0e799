"""`SqlStore`: the `Store` on SQLAlchemy Core, for MariaDB and SQLite alike."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from orchestrator.errors import (
    IdempotencyConflict,
    InvalidRequest,
    JobFinished,
    JobNotFound,
    StoreUnavailable,
)
from orchestrator.ids import new_job_id, new_token
from orchestrator.jobs import (
    ACTIVE_STATUSES,
    CLAIMABLE_STATUSES,
    Claim,
    Dispatch,
    Job,
    JobEvent,
    JobSpec,
    JobStatus,
    Priority,
)
from orchestrator.store import dialect
from orchestrator.store.base import JobPage, Outcome, Submitted
from orchestrator.store.codec import dumps, event_from_row, job_from_row
from orchestrator.store.tables import job_events, jobs

logger = logging.getLogger(__name__)

S = JobStatus


class SqlStore:
    """Jobs in MariaDB or SQLite. Each public method is one transaction."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def from_url(cls, url: str, *, sqlite_busy_timeout_ms: int = 15000) -> SqlStore:
        return cls(dialect.create_engine(url, sqlite_busy_timeout_ms=sqlite_busy_timeout_ms))

    def close(self) -> None:
        self.engine.dispose()

    # -- transactions -------------------------------------------------------------------

    @contextmanager
    def _tx(self, *, write: bool) -> Iterator[Connection]:
        try:
            with self.engine.connect() as conn:
                if write:
                    conn.execution_options(**{dialect.WRITE_OPTION: True})
                with conn.begin():
                    yield conn
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
            raise StoreUnavailable(f"database error: {exc.orig or exc}") from exc

    def _locked_job(self, conn: Connection, job_id: str) -> Mapping[Any, Any] | None:
        row = conn.execute(sa.select(jobs).where(jobs.c.id == job_id).with_for_update()).first()
        return None if row is None else row._mapping

    @staticmethod
    def _event(
        conn: Connection,
        job_id: str,
        now: datetime,
        event: str,
        *,
        status: JobStatus | None,
        attempt: int,
        actor: str,
        detail: dict[str, Any] | None = None,
    ) -> None:
        conn.execute(
            job_events.insert().values(
                job_id=job_id,
                at=now,
                event=event,
                status=status.value if status else None,
                attempt=attempt,
                actor=actor,
                detail=dumps(detail) if detail else None,
            )
        )

    def _reload(self, conn: Connection, job_id: str) -> Job:
        row = conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).one()
        return job_from_row(row._mapping)

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
                conn.execute(jobs.insert(), rows)
                conn.execute(
                    job_events.insert(),
                    [_submitted_event(row, now) for row in rows],
                )
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
                        jobs.c.published_at.is_(None),
                        jobs.c.status.in_(CLAIMABLE_STATUSES),
                        jobs.c.attempts == attempt - 1,
                    )
                    .values(published_at=now)
                )

    def unpublish_waiting(self) -> int:
        with self._tx(write=True) as conn:
            return int(
                conn.execute(
                    jobs.update()
                    .where(jobs.c.status.in_(CLAIMABLE_STATUSES), jobs.c.published_at.is_not(None))
                    .values(published_at=None)
                ).rowcount
            )

    # -- reading ------------------------------------------------------------------------

    def get_job(self, job_id: str) -> Job | None:
        with self._tx(write=False) as conn:
            row = conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).first()
        return None if row is None else job_from_row(row._mapping)

    def list_jobs(
        self, *, status: str | None, type: str | None, limit: int, cursor: str | None
    ) -> JobPage:
        query = sa.select(jobs).order_by(jobs.c.id.desc()).limit(limit + 1)
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
                values = {"status": S.CANCELLED.value, "finished_at": now, "updated_at": now}
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

    @staticmethod
    def _set(conn: Connection, job_id: str, values: dict[str, Any]) -> None:
        conn.execute(jobs.update().where(jobs.c.id == job_id).values(**values))

    # -- a worker's attempt ---------------------------------------------------------------

    def claim_job(self, dispatch: Dispatch, worker_id: str, now: datetime) -> Claim | None:
        token = new_token()
        with self._tx(write=True) as conn:
            claimed = conn.execute(
                jobs.update()
                .where(
                    jobs.c.id == dispatch.job_id,
                    jobs.c.status.in_(CLAIMABLE_STATUSES),
                    jobs.c.attempts == dispatch.attempt - 1,
                    jobs.c.available_at <= now,
                )
                .values(
                    status=S.RUNNING.value,
                    attempts=jobs.c.attempts + 1,
                    worker_id=worker_id,
                    claim_token=token,
                    heartbeat_at=now,
                    started_at=now,
                    updated_at=now,
                )
            ).rowcount
            if claimed != 1:
                self._unpublish_if_early(conn, dispatch, now)
                return None
            self._event(
                conn,
                dispatch.job_id,
                now,
                "started",
                status=S.RUNNING,
                attempt=dispatch.attempt,
                actor=worker_id,
            )
            job = self._reload(conn, dispatch.job_id)
        return Claim(job=job, token=token, attempt=dispatch.attempt)

    @staticmethod
    def _unpublish_if_early(conn: Connection, dispatch: Dispatch, now: datetime) -> None:
        """A message for the right attempt that came before the job is due (an early
        duplicate, or this worker's clock behind the scheduler's) is dropped by the caller:
        have the scheduler publish the job again when it is due, so it cannot strand."""
        conn.execute(
            jobs.update()
            .where(
                jobs.c.id == dispatch.job_id,
                jobs.c.status.in_(CLAIMABLE_STATUSES),
                jobs.c.attempts == dispatch.attempt - 1,
                jobs.c.available_at > now,
            )
            .values(published_at=None)
        )

    def heartbeat(self, claims: Sequence[Claim], now: datetime) -> set[str]:
        if not claims:
            return set()
        ids = [c.job.id for c in claims]
        tokens = [c.token for c in claims]
        with self._tx(write=True) as conn:
            conn.execute(
                jobs.update()
                .where(
                    jobs.c.id.in_(ids),
                    jobs.c.claim_token.in_(tokens),
                    jobs.c.status.in_(ACTIVE_STATUSES),
                )
                .values(heartbeat_at=now)
            )
            rows = conn.execute(
                sa.select(jobs.c.claim_token).where(
                    jobs.c.id.in_(ids), jobs.c.cancel_requested.is_(True)
                )
            )
            return {r.claim_token for r in rows} & set(tokens)

    def record_progress(self, claim: Claim, progress: Any, now: datetime) -> bool:
        with self._tx(write=True) as conn:
            return bool(
                conn.execute(
                    jobs.update()
                    .where(
                        jobs.c.id == claim.job.id,
                        jobs.c.claim_token == claim.token,
                        jobs.c.status.in_(ACTIVE_STATUSES),
                    )
                    .values(progress=dumps(progress), heartbeat_at=now, updated_at=now)
                ).rowcount
            )

    def complete_job(self, claim: Claim, result: Any, now: datetime) -> Outcome:
        with self._tx(write=True) as conn:
            row = self._fenced_row(conn, claim, now, "complete")
            if row is None:
                return Outcome(None)
            status = S.CANCELLED if row["cancel_requested"] else S.DONE
            values = {
                "status": status.value,
                "result": dumps(result),
                "error": None,
                "finished_at": now,
                "updated_at": now,
            }
            event = "cancelled" if status is S.CANCELLED else "completed"
            return self._finish(conn, claim, now, status, values, event)

    def fail_job(self, claim: Claim, error: str, now: datetime, retry_delay_s: float) -> Outcome:
        with self._tx(write=True) as conn:
            row = self._fenced_row(conn, claim, now, "fail")
            if row is None:
                return Outcome(None)
            values: dict[str, Any] = {"error": error, "updated_at": now}
            detail: dict[str, Any] = {"error": error[:1000]}
            if row["cancel_requested"]:
                status, event = S.CANCELLED, "cancelled"
                values["finished_at"] = now
            elif row["attempts"] < row["max_attempts"]:
                status, event = S.FAILED, "retry_scheduled"
                retry_at = now + timedelta(seconds=retry_delay_s)
                values.update(available_at=retry_at, published_at=None)
                detail["retry_at"] = retry_at.isoformat()
            else:
                status, event = S.DEAD_LETTER, "dead_lettered"
                values["finished_at"] = now
            values["status"] = status.value
            return self._finish(conn, claim, now, status, values, event, detail)

    def release_job(self, claim: Claim, now: datetime) -> Outcome:
        with self._tx(write=True) as conn:
            row = self._fenced_row(conn, claim, now, "release")
            if row is None:
                return Outcome(None)
            if row["cancel_requested"]:
                values = {"status": S.CANCELLED.value, "finished_at": now, "updated_at": now}
                return self._finish(conn, claim, now, S.CANCELLED, values, "cancelled")
            # The attempt was interrupted, not failed: it does not count.
            values = {
                "status": S.PENDING.value,
                "attempts": jobs.c.attempts - 1,
                "worker_id": None,
                "claim_token": None,
                "published_at": None,
                "heartbeat_at": None,
                "updated_at": now,
            }
            return self._finish(conn, claim, now, S.PENDING, values, "released")

    def _fenced_row(
        self, conn: Connection, claim: Claim, now: datetime, action: str
    ) -> Mapping[Any, Any] | None:
        """The job's row if `claim` still holds it; otherwise None, and the rejection is logged
        in the job's events (a reclaimed attempt must not overwrite the newer one)."""
        row = self._locked_job(conn, claim.job.id)
        if row is not None and (
            row["claim_token"] == claim.token and row["status"] in ACTIVE_STATUSES
        ):
            return row
        actor = claim.job.worker_id or "worker"
        detail = {
            "action": action,
            "current_status": row["status"] if row else None,
            "current_attempt": row["attempts"] if row else None,
        }
        if row is not None:
            self._event(
                conn,
                claim.job.id,
                now,
                "stale_result_rejected",
                status=None,
                attempt=claim.attempt,
                actor=actor,
                detail=detail,
            )
        logger.warning(
            "rejected %s of job %s attempt %d: the claim is no longer current",
            action,
            claim.job.id,
            claim.attempt,
            extra={
                "event": "stale_result_rejected",
                "job_id": claim.job.id,
                "attempt": claim.attempt,
            },
        )
        return None

    def _finish(
        self,
        conn: Connection,
        claim: Claim,
        now: datetime,
        status: JobStatus,
        values: dict[str, Any],
        event: str,
        detail: dict[str, Any] | None = None,
    ) -> Outcome:
        self._set(conn, claim.job.id, values)
        self._event(
            conn,
            claim.job.id,
            now,
            event,
            status=status,
            attempt=claim.attempt,
            actor=claim.job.worker_id or "worker",
            detail=detail,
        )
        return Outcome(status, self._reload(conn, claim.job.id))


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
