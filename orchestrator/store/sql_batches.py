"""Claims and completions of several attempts in one transaction each.

The same conditional writes as `SqlAttempts.claim_job` / `complete_job` (DESIGN invariants 2
and 4), done for a group with a fixed number of statements: a worker whose slots finish
together pays one commit, not one per job (docs/benchmarks.md).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from orchestrator.ids import new_token
from orchestrator.jobs import ACTIVE_STATUSES, CLAIMABLE_STATUSES, Claim, Dispatch, JobStatus
from orchestrator.store.base import Outcome
from orchestrator.store.codec import dumps, job_from_row
from orchestrator.store.sql_attempts import SqlAttempts
from orchestrator.store.tables import job_events, jobs

S = JobStatus

# The most encoded result bytes one UPDATE of `complete_jobs` carries. A group holds up to 64
# results of up to `max_result_bytes` each; in one statement they could pass MariaDB's
# `max_allowed_packet` (16 MiB by default), an error that fails the whole group every time.
# A result larger than this goes in a statement of its own (settings bound it at 4 MiB).
MAX_STATEMENT_RESULT_BYTES = 4 << 20


# The most attempts one statement of `claim_jobs` / `complete_jobs` names; a larger group
# is written in chunks of this many, in the same transaction.
MAX_ROWS = 64

# The group statements, built once per group size (at most MAX_ROWS of each): building,
# cache-keying and compiling a CASE of n rows per call cost more Python than the
# statement's round trip (see `sql_base._JOB_BY_ID`). Values travel as bound parameters:
# `id0`..`id{n-1}` and, per row, one name per column the CASE sets.
# What fencing a completion reads: not the whole row (parsing a job's ~20 columns is most
# of a completion's Python).
_FENCES_BY_IDS_LOCKED = (
    sa.select(jobs.c.id, jobs.c.claim_token, jobs.c.status, jobs.c.cancel_requested)
    .where(jobs.c.id.in_(sa.bindparam("ids", expanding=True)))
    .order_by(jobs.c.id)  # locked in id order, as every multi-row write here is: no deadlock
    .with_for_update()
)


# A group's claims share one random prefix; each claim's token is that prefix and the last
# `TOKEN_TAIL` characters of its job id (random bits of its UUIDv7). So one UPDATE gives
# every row a token of its own without a CASE per row, and the rows just claimed are found
# again by the prefix alone. Fencing compares a job's row with its claim's token, as before.
TOKEN_TAIL = 12
TOKEN_PREFIX = 32 - TOKEN_TAIL  # hex characters, 80 random bits


def group_token(prefix: str, job_id: str) -> str:
    """The token the group claim `_CLAIM_GROUP` gives the job (SUBSTR counts from the end)."""
    return prefix + job_id[-TOKEN_TAIL:]


_PREFIX = sa.bindparam("prefix", type_=sa.String(TOKEN_PREFIX))
# `sql_attempts._CLAIM` for every job of a group with the same attempt and band.
_CLAIM_GROUP = (
    jobs.update()
    .where(
        jobs.c.id.in_(sa.bindparam("ids", expanding=True)),
        jobs.c.status.in_(CLAIMABLE_STATUSES),
        jobs.c.attempts == sa.bindparam("prior"),
        jobs.c.priority == sa.bindparam("band"),
        jobs.c.available_at <= sa.bindparam("now"),
    )
    .values(
        status=sa.case((jobs.c.gpu.is_(None), S.RUNNING.value), else_=S.CLAIMED.value),
        attempts=jobs.c.attempts + 1,
        worker_id=sa.bindparam("worker"),
        claim_token=_PREFIX + sa.func.substr(jobs.c.id, -TOKEN_TAIL),
        heartbeat_at=sa.bindparam("now"),
        started_at=sa.bindparam("now"),
        updated_at=sa.bindparam("now"),
    )
)
_CLAIMED_NOW = sa.and_(
    jobs.c.id.in_(sa.bindparam("ids", expanding=True)),
    sa.func.substr(jobs.c.claim_token, 1, TOKEN_PREFIX) == _PREFIX,
)
_CLAIMED_JOBS = sa.select(jobs).where(_CLAIMED_NOW)


def _entries_of(event: Any, actor: Any, where: Any) -> sa.Insert:
    """One audit entry per job row matching `where`, written by the database from the rows
    just updated rather than sent row by row: escaping seven values per entry was a fifth
    of a group claim's Python. `event` and `actor` are column expressions."""
    return job_events.insert().from_select(
        ["job_id", "at", "event", "status", "attempt", "actor", "detail"],
        sa.select(
            jobs.c.id,
            sa.bindparam("now", type_=jobs.c.updated_at.type),
            event,
            jobs.c.status,
            jobs.c.attempts,
            actor,
            sa.null(),
        ).where(where),
    )


_CLAIM_EVENTS = _entries_of(
    sa.case((jobs.c.status == S.RUNNING.value, "started"), else_="claimed"),
    sa.bindparam("worker", type_=jobs.c.worker_id.type),
    _CLAIMED_NOW,
)
# A completion's entries: its rows are locked, fenced and just written (status done or
# cancelled, attempts and worker those of the claim).
_COMPLETION_EVENTS = _entries_of(
    sa.case((jobs.c.status == S.CANCELLED.value, "cancelled"), else_="completed"),
    sa.func.coalesce(jobs.c.worker_id, "worker"),
    jobs.c.id.in_(sa.bindparam("ids", expanding=True)),
)


def _ids(n: int) -> list[Any]:
    return [sa.bindparam(f"id{i}") for i in range(n)]


def _by_id(n: int, name: str, otherwise: Any) -> Any:
    """A CASE on the job id: row `id{i}` gets the bound value `{name}{i}`."""
    return sa.case(
        *[(key, sa.bindparam(f"{name}{i}")) for i, key in enumerate(_ids(n))],
        value=jobs.c.id,
        else_=otherwise,
    )


@functools.cache
def _complete_update(n: int) -> sa.Update:
    return (
        jobs.update()
        .where(jobs.c.id.in_(_ids(n)))
        .values(
            status=_by_id(n, "status", jobs.c.status),
            result=_by_id(n, "result", jobs.c.result),
            error=None,
            finished_at=sa.bindparam("now"),
            updated_at=sa.bindparam("now"),
        )
    )


def _rows_for(n: int) -> int:
    """The statement size that takes n rows: a power of two, so that a worker compiles a
    handful of statements, not one per group size (compiling one of 64 rows takes tens of
    milliseconds)."""
    return 1 << max(n - 1, 0).bit_length()


def _per_row(ids: Sequence[str], **columns: Sequence[Any]) -> dict[str, Any]:
    """The bound values of a `_by_id` statement of `_rows_for(len(ids))` rows: `id{i}`,
    and `{name}{i}` per column. The rows past `ids` name the id "", which no job has."""
    size = _rows_for(len(ids))
    params: dict[str, Any] = {f"id{i}": job_id for i, job_id in enumerate(ids)}
    params.update((f"id{i}", "") for i in range(len(ids), size))
    for name, values in columns.items():
        params.update((f"{name}{i}", v) for i, v in enumerate(values))
        params.update((f"{name}{i}", None) for i in range(len(values), size))
    return params


class SqlBatches(SqlAttempts):
    def claim_jobs(
        self, dispatches: Sequence[Dispatch], worker_id: str, now: datetime
    ) -> list[Claim | None]:
        """`claim_job` for each dispatch, in one transaction; None where it would be None."""
        if len(dispatches) == 1:
            return [self.claim_job(dispatches[0], worker_id, now)]
        if len(dispatches) > MAX_ROWS:
            return [
                claim
                for i in range(0, len(dispatches), MAX_ROWS)
                for claim in self.claim_jobs(dispatches[i : i + MAX_ROWS], worker_id, now)
            ]
        if len({d.job_id for d in dispatches}) < len(dispatches):
            # A job named twice (the same message twice, or a stale attempt's message next
            # to the current one): only one-at-a-time claims give the claim to whichever
            # dispatch is valid, not to whichever came first. Rare, so simply slower.
            return [self.claim_job(d, worker_id, now) for d in dispatches]
        ids = [d.job_id for d in dispatches]
        prefix = new_token()[:TOKEN_PREFIX]
        by_attempt_and_band: dict[tuple[int, int], list[str]] = {}
        for d in dispatches:
            by_attempt_and_band.setdefault((d.attempt - 1, int(d.priority)), []).append(d.job_id)
        with self._tx(write=True) as conn:
            for (prior, band), group in by_attempt_and_band.items():
                conn.execute(
                    _CLAIM_GROUP,
                    {
                        "ids": group,
                        "prior": prior,
                        "band": band,
                        "now": now,
                        "worker": worker_id,
                        "prefix": prefix,
                    },
                )
            found = {"ids": ids, "prefix": prefix}
            rows = {r.id: r._mapping for r in conn.execute(_CLAIMED_JOBS, found)}
            claims: list[Claim | None] = []
            for d in dispatches:
                row = rows.get(d.job_id)
                token = group_token(prefix, d.job_id)
                if row is None or row["claim_token"] != token:
                    self._unpublish_if_early(conn, d, now)
                    claims.append(None)
                    continue
                claims.append(Claim(job=job_from_row(row), token=token, attempt=d.attempt))
            if rows:
                conn.execute(_CLAIM_EVENTS, {**found, "now": now, "worker": worker_id})
        return claims

    def complete_jobs(self, items: Sequence[tuple[Claim, Any]], now: datetime) -> list[Outcome]:
        """`complete_job` for each (claim, result), in one transaction. The outcomes carry
        the status each job was left in, not the job (a worker never reads it back; the
        row is one `get_job` away)."""
        if len(items) == 1:
            return [self.complete_job(items[0][0], items[0][1], now)]
        ids = sorted({claim.job.id for claim, _ in items})
        with self._tx(write=True) as conn:
            locked = {r.id: r for r in conn.execute(_FENCES_BY_IDS_LOCKED, {"ids": ids})}
            current: dict[str, tuple[Claim, str, JobStatus]] = {}  # result encoded once
            winner: dict[str, int] = {}  # the item that completes each job
            for index, (claim, result) in enumerate(items):
                row = locked.get(claim.job.id)
                if (
                    row is not None
                    and claim.job.id not in current
                    and row.claim_token == claim.token
                    and row.status in ACTIVE_STATUSES
                ):
                    status = S.CANCELLED if row.cancel_requested else S.DONE
                    current[claim.job.id] = (claim, dumps(result), status)
                    winner[claim.job.id] = index
            if current:
                self._write_completions(conn, current, now)
            outcomes = []
            for index, (claim, _) in enumerate(items):
                if winner.get(claim.job.id) != index:
                    # Fenced: the same check and audit entry as a single completion's.
                    self._fenced_row(conn, claim, now, "complete")
                    outcomes.append(Outcome(None))
                    continue
                outcomes.append(Outcome(current[claim.job.id][2]))
        return outcomes

    @staticmethod
    def _write_completions(
        conn: Connection, current: Mapping[str, tuple[Claim, str, JobStatus]], now: datetime
    ) -> None:
        for chunk in _chunks_by_size(current):
            conn.execute(
                _complete_update(_rows_for(len(chunk))),
                {
                    **_per_row(
                        chunk,
                        status=[current[i][2].value for i in chunk],
                        result=[current[i][1] for i in chunk],
                    ),
                    "now": now,
                },
            )
        conn.execute(_COMPLETION_EVENTS, {"ids": list(current), "now": now})


def _chunks_by_size(current: Mapping[str, tuple[Claim, str, JobStatus]]) -> list[list[str]]:
    """The job ids in order, cut so each chunk's encoded results stay within
    `MAX_STATEMENT_RESULT_BYTES` (a chunk of one may pass it), and at most MAX_ROWS ids."""
    chunks: list[list[str]] = []
    size = 0
    for job_id, (_, encoded, _) in current.items():
        n = len(encoded.encode())
        if not chunks or size + n > MAX_STATEMENT_RESULT_BYTES or len(chunks[-1]) == MAX_ROWS:
            chunks.append([])
            size = 0
        chunks[-1].append(job_id)
        size += n
    return chunks
