"""The worker's side of `SqlStore`: claim an attempt, heartbeat it, record its outcome.

Every write after the claim is fenced by the claim's token (DESIGN invariant 4).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from orchestrator.ids import new_token
from orchestrator.jobs import (
    ACTIVE_STATUSES,
    CLAIMABLE_STATUSES,
    LOST_WORKER_ERROR,
    Claim,
    Dispatch,
    JobStatus,
    Priority,
)
from orchestrator.store.base import Outcome, Reclaimed
from orchestrator.store.codec import dumps
from orchestrator.store.sql_base import SqlBase
from orchestrator.store.tables import job_events, jobs

logger = logging.getLogger(__name__)

S = JobStatus

# The claim's conditional UPDATE, built once (see `sql_base._JOB_BY_ID`); the `b_` names keep
# the bound values apart from the columns they set.
_CLAIM = (
    jobs.update()
    .where(
        jobs.c.id == sa.bindparam("b_id"),
        jobs.c.status.in_(CLAIMABLE_STATUSES),
        jobs.c.attempts == sa.bindparam("b_prior_attempts"),
        jobs.c.available_at <= sa.bindparam("b_now"),
        # A message left in the band a job was moved out of claims nothing.
        jobs.c.priority == sa.bindparam("b_priority"),
    )
    .values(
        # A job that needs a GPU is `claimed` until its lease is granted.
        status=sa.case((jobs.c.gpu.is_(None), S.RUNNING.value), else_=S.CLAIMED.value),
        attempts=jobs.c.attempts + 1,
        worker_id=sa.bindparam("b_worker"),
        claim_token=sa.bindparam("b_token"),
        heartbeat_at=sa.bindparam("b_now"),
        started_at=sa.bindparam("b_now"),
        updated_at=sa.bindparam("b_now"),
    )
)


class SqlAttempts(SqlBase):
    def claim_job(self, dispatch: Dispatch, worker_id: str, now: datetime) -> Claim | None:
        token = new_token()
        with self._tx(write=True) as conn:
            claimed = conn.execute(
                _CLAIM,
                {
                    "b_id": dispatch.job_id,
                    "b_prior_attempts": dispatch.attempt - 1,
                    "b_now": now,
                    "b_priority": int(dispatch.priority),
                    "b_worker": worker_id,
                    "b_token": token,
                },
            ).rowcount
            if claimed != 1:
                self._unpublish_if_early(conn, dispatch, now)
                return None
            job = self._reload(conn, dispatch.job_id)
            self._event(
                conn,
                dispatch.job_id,
                now,
                "started" if job.status is S.RUNNING else "claimed",
                status=job.status,
                attempt=dispatch.attempt,
                actor=worker_id,
            )
        return Claim(job=job, token=token, attempt=dispatch.attempt)

    def mark_running(self, claim: Claim, now: datetime, detail: dict[str, Any]) -> bool:
        """A claimed job got its GPU lease: it runs now. False if the claim is no longer
        current (reclaimed meanwhile) or the job was asked to cancel while it waited."""
        with self._tx(write=True) as conn:
            moved = conn.execute(
                jobs.update()
                .where(
                    jobs.c.id == claim.job.id,
                    jobs.c.claim_token == claim.token,
                    jobs.c.status == S.CLAIMED.value,
                    jobs.c.cancel_requested.is_(False),
                )
                .values(status=S.RUNNING.value, heartbeat_at=now, started_at=now, updated_at=now)
            ).rowcount
            if moved:
                self._event(
                    conn,
                    claim.job.id,
                    now,
                    "started",
                    status=S.RUNNING,
                    attempt=claim.attempt,
                    actor=claim.job.worker_id or "worker",
                    detail=detail,
                )
        return bool(moved)

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
            return self._finish(conn, claim, row, now, status, values, event)

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
            return self._finish(conn, claim, row, now, status, values, event, detail)

    def release_job(
        self, claim: Claim, now: datetime, *, delay_s: float = 0.0, reason: str | None = None
    ) -> Outcome:
        with self._tx(write=True) as conn:
            row = self._fenced_row(conn, claim, now, "release")
            if row is None:
                return Outcome(None)
            if row["cancel_requested"]:
                values = {"status": S.CANCELLED.value, "finished_at": now, "updated_at": now}
                return self._finish(conn, claim, row, now, S.CANCELLED, values, "cancelled")
            # The attempt was interrupted, not failed: it does not count. (The row is locked,
            # so its count is current.)
            values = {
                "status": S.PENDING.value,
                "attempts": row["attempts"] - 1,
                "worker_id": None,
                "claim_token": None,
                "published_at": None,
                "heartbeat_at": None,
                "updated_at": now,
            }
            if delay_s > 0:
                values["available_at"] = now + timedelta(seconds=delay_s)
            detail = {"reason": reason} if reason else None
            return self._finish(conn, claim, row, now, S.PENDING, values, "released", detail)

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
        row: Mapping[Any, Any],
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
        # `row` is locked (`_fenced_row`): the job is that row with `values` applied.
        return Outcome(status, self._updated(row, values))

    def reclaim_stale(self, now: datetime, stale_before: datetime, limit: int) -> list[Reclaimed]:
        """Attempts whose heartbeat is older than `stale_before` lost their worker: requeue
        each job (the reclaimer publishes its fresh message) while attempts remain, else
        dead-letter it; a job asked to cancel ends cancelled. The old claim token is cleared,
        so a late result of the lost attempt is fenced off."""
        with self._tx(write=True) as conn:
            rows = conn.execute(
                sa.select(
                    jobs.c.id,
                    jobs.c.type,
                    jobs.c.priority,
                    jobs.c.attempts,
                    jobs.c.max_attempts,
                    jobs.c.cancel_requested,
                    jobs.c.worker_id,
                    jobs.c.heartbeat_at,
                )
                .where(jobs.c.status.in_(ACTIVE_STATUSES), jobs.c.heartbeat_at < stale_before)
                .order_by(jobs.c.heartbeat_at)
                .limit(limit)
                # A row locked by a worker's open heartbeat is being kept alive: skip it
                # rather than wait on it (a frozen worker could hold it for a long time).
                .with_for_update(skip_locked=True)
            ).all()
            if not rows:
                return []
            reclaimed = [
                Reclaimed(
                    r.id,
                    r.type,
                    Priority(r.priority),
                    r.attempts,
                    _reclaim_status(r),
                    r.worker_id,
                    r.heartbeat_at,
                )
                for r in rows
            ]
            common = {"claim_token": None, "updated_at": now, "error": LOST_WORKER_ERROR}
            for status in (S.PENDING, S.DEAD_LETTER, S.CANCELLED):
                ids = [r.job_id for r in reclaimed if r.status is status]
                if not ids:
                    continue
                values: dict[str, Any] = {**common, "status": status.value}
                if status is S.PENDING:
                    values.update(
                        available_at=now, published_at=None, worker_id=None, heartbeat_at=None
                    )
                else:
                    values["finished_at"] = now
                conn.execute(jobs.update().where(jobs.c.id.in_(ids)).values(**values))
            conn.execute(job_events.insert(), [_reclaimed_event(r, now) for r in reclaimed])
        return reclaimed


def _reclaim_status(row: Any) -> JobStatus:
    if row.cancel_requested:
        return S.CANCELLED
    return S.PENDING if row.attempts < row.max_attempts else S.DEAD_LETTER


def _reclaimed_event(r: Reclaimed, now: datetime) -> dict[str, Any]:
    event = {S.PENDING: "reclaimed", S.DEAD_LETTER: "dead_lettered"}.get(r.status, "cancelled")
    return {
        "job_id": r.job_id,
        "at": now,
        "event": event,
        "status": r.status.value,
        "attempt": r.attempt,
        "actor": "reclaimer",
        "detail": dumps(
            {
                "error": LOST_WORKER_ERROR,
                "worker": r.worker_id,
                "last_heartbeat_at": r.heartbeat_at.isoformat() if r.heartbeat_at else None,
            }
        ),
    }
