"""The lease side of `SqlStore`: request, wait, heartbeat, release, expire.

Every write that can change who holds what locks the admission policy's row first (see
`SqlGpus._lock_policy`), so admission decisions are serialised across replicas and
threads: two requests can never both take the last free megabytes (DESIGN invariant 6).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from orchestrator.admission import Book, Limits, Pass, serve_queue
from orchestrator.errors import LeaseExpired, LeaseNotFound, LeaseReleased
from orchestrator.ids import new_token
from orchestrator.jobs import ACTIVE_STATUSES
from orchestrator.leases import (
    AdmissionPolicy,
    Denial,
    DenyReason,
    Lease,
    LeaseOutcome,
    LeaseRequest,
    LeaseStatus,
)
from orchestrator.store.gpu_base import Renewal, Sweep
from orchestrator.store.lease_rows import lease_from_row, lease_row
from orchestrator.store.sql_agents import evicting_pairs
from orchestrator.store.sql_gpus import SqlGpus, load_devices
from orchestrator.store.sql_usage import fair_share_usage, record_usage
from orchestrator.store.tables import jobs, leases

logger = logging.getLogger(__name__)

L = LeaseStatus
# A waiter whose process died is timed out by the sweep this long after its deadline (the
# waiter itself times out its request at the deadline).
WAIT_GRACE_S = 2.0
# Statements every lease request or release runs, built once (see `sql_base._JOB_BY_ID`).
_INSERT_LEASE = leases.insert()
_ANY_WAITING = sa.select(leases.c.token).where(leases.c.status == L.WAITING.value).limit(1)


class SqlLeases(SqlGpus):
    def request_lease(self, request: LeaseRequest, now: datetime, limits: Limits) -> LeaseOutcome:
        """Grant the request now if policy allows; else queue it (wait_s > 0, and waiting
        could help) or deny it. Waiting requests ahead of it that now fit are granted too."""
        token = new_token()
        candidate = Lease(
            token=token,
            agent=request.agent,
            owner=request.owner,
            status=L.WAITING,
            est_vram_mb=request.est_vram_mb,
            gpu_count=request.gpu_count,
            priority=request.priority,
            ttl_s=request.ttl_s,
            queued_at=request.queued_at or now,
            created_at=now,
            node=request.node,
            operation=request.operation,
            model_id=request.model_id,
            job_id=request.job_id,
            avoid=request.avoid,
            estimated_duration_s=request.estimated_duration_s,
        )
        with self._tx(write=True) as conn:
            if request.job_id is not None:  # its usage is booked to the attempt it serves
                attempt = conn.execute(
                    sa.select(jobs.c.attempts).where(jobs.c.id == request.job_id)
                ).scalar()
                candidate = _replace(candidate, attempt=attempt)
            result = self._serve(conn, now, limits, extra=candidate)
            placement = result.granted.pop(token, None)
            self._grant(conn, result, now)
            expired = tuple(result.expired)
            if placement is not None:
                lease = _activate(candidate, placement.node, placement.devices, now)
                conn.execute(_INSERT_LEASE, lease_row(lease))
                return LeaseOutcome(lease, expired=expired)
            denial = result.denied[token]
            # A node that reports no GPU is not a queue to wait in (its worker would sit
            # on a slot for nothing): answer at once.
            no_gpus_there = denial.reason is DenyReason.NO_GPUS and request.node is not None
            if request.wait_s <= 0 or denial.final or denial.unavailable or no_gpus_there:
                return LeaseOutcome(None, denial, expired)
            waiting = _replace(candidate, wait_until=now + timedelta(seconds=request.wait_s))
            conn.execute(_INSERT_LEASE, lease_row(waiting))
            return LeaseOutcome(waiting, denial, expired)

    def finish_wait(self, token: str, now: datetime, limits: Limits) -> LeaseOutcome:
        """A waiter's deadline passed: one last chance to be granted, else `timed_out`."""
        with self._tx(write=True) as conn:
            # Its own deadline has passed (now > wait_until): keep it in the queue this once.
            result = self._serve(conn, now, limits, keep=token)
            self._grant(conn, result, now)
            row = self._lease_row(conn, token)
            if row is None:
                raise LeaseNotFound(f"no lease {token}", token=token)
            lease = lease_from_row(row)
            if lease.status is L.ACTIVE:
                return LeaseOutcome(lease)
            if lease.status is not L.WAITING:  # timed out by the sweep, or released
                return LeaseOutcome(
                    None,
                    Denial(
                        DenyReason.WAIT_TIMEOUT,
                        f"the request ended {lease.status.value} before it was granted"
                        + (f": {lease.reason}" if lease.reason else ""),
                    ),
                )
            last = result.denied.get(token)
            why = last.message if last else "not granted in time"
            conn.execute(
                leases.update()
                .where(leases.c.token == token, leases.c.status == L.WAITING.value)
                .values(status=L.TIMED_OUT.value, released_at=now, reason=why)
            )
            waited = (now - lease.created_at).total_seconds()
            return LeaseOutcome(
                None,
                Denial(
                    DenyReason.WAIT_TIMEOUT,
                    f"waited {waited:.1f}s and was not granted: {why}",
                    last.estimated_wait_ms if last else None,
                ),
            )

    def cancel_wait(self, token: str, now: datetime, limits: Limits) -> Lease | None:
        """The waiter gave up (hung up, stopping): its request ends `timed_out`, or, if it
        was granted meanwhile, the lease is released at once. None if unknown."""
        with self._tx(write=True) as conn:
            policy, _ = self._lock_policy(conn)
            row = self._lease_row(conn, token, lock=True)
            if row is None:
                return None
            lease = lease_from_row(row)
            if lease.status not in (L.WAITING, L.ACTIVE):
                return lease
            status = L.TIMED_OUT if lease.status is L.WAITING else L.RELEASED
            values = {"status": status.value, "released_at": now, "reason": "the waiter gave up"}
            conn.execute(leases.update().where(leases.c.token == token).values(**values))
            if status is L.RELEASED:  # its room goes to the next in line
                end = now if lease.expires_at is None else min(now, lease.expires_at)
                record_usage(conn, lease, end, L.RELEASED.value)
                self._grant(conn, self._serve(conn, now, limits, policy=policy), now)
            return _replace(lease, **values)

    def get_lease(self, token: str) -> Lease | None:
        with self._tx(write=False) as conn:
            row = conn.execute(sa.select(leases).where(leases.c.token == token)).first()
        return lease_from_row(row._mapping) if row else None

    def get_leases(self, tokens: Sequence[str]) -> list[Lease]:
        if not tokens:
            return []
        with self._tx(write=False) as conn:
            rows = conn.execute(sa.select(leases).where(leases.c.token.in_(list(tokens))))
            return [lease_from_row(r._mapping) for r in rows]

    def list_leases(
        self,
        statuses: Sequence[LeaseStatus] = (L.ACTIVE,),
        limit: int | None = None,
        owner: str | None = None,
    ) -> list[Lease]:
        query = (
            sa.select(leases)
            .where(leases.c.status.in_([s.value for s in statuses]))
            .order_by(leases.c.queued_at, leases.c.created_at)
            .limit(limit)
        )
        if owner is not None:
            query = query.where(leases.c.owner == owner)
        with self._tx(write=False) as conn:
            return [lease_from_row(r._mapping) for r in conn.execute(query)]

    def renew_lease(self, token: str, now: datetime, used_vram_mb: int | None = None) -> Lease:
        """Extend an active lease by its ttl. Raises `LeaseNotFound`, `LeaseExpired` (it
        expired: the holder must stop using the device) or `LeaseReleased`."""
        with self._tx(write=True) as conn:
            row = self._lease_row(conn, token, lock=True)
            if row is None:
                raise LeaseNotFound(f"no lease {token}", token=token)
            lease = lease_from_row(row)
            _check_live(lease, now)
            if lease.status is L.WAITING:
                return lease
            values: dict[str, Any] = {"expires_at": now + timedelta(seconds=lease.ttl_s)}
            if used_vram_mb is not None:
                values["used_vram_mb"] = used_vram_mb
            conn.execute(leases.update().where(leases.c.token == token).values(**values))
            return _replace(lease, **values)

    def renew_leases(self, renewals: Sequence[Renewal], now: datetime) -> set[str]:
        """Extend a worker's job leases, each only while it is active and its job is still
        held by the same claim (a reclaimed attempt must not keep the devices); returns the
        tokens not renewed. One UPDATE each: a worker holds a handful."""
        if not renewals:
            return set()
        lost = set()
        with self._tx(write=True) as conn:
            for r in renewals:
                values: dict[str, Any] = {"expires_at": now + timedelta(seconds=r.ttl_s)}
                if r.used_vram_mb is not None:
                    values["used_vram_mb"] = r.used_vram_mb
                query = leases.update().where(
                    leases.c.token == r.token,
                    leases.c.status == L.ACTIVE.value,
                    leases.c.expires_at >= now,
                )
                if r.claim_token is not None:
                    held = sa.select(jobs.c.id).where(
                        jobs.c.id == leases.c.job_id,
                        jobs.c.claim_token == r.claim_token,
                        jobs.c.status.in_(ACTIVE_STATUSES),
                    )
                    query = query.where(held.exists())
                if not conn.execute(query.values(**values)).rowcount:
                    lost.add(r.token)
        return lost

    def release_lease(
        self,
        token: str,
        now: datetime,
        limits: Limits,
        *,
        peak_vram_mb: int | None = None,
        success: bool | None = None,
    ) -> Lease:
        """Give the devices back (idempotent: a released, expired or timed-out lease is
        returned as it is) and grant waiting requests that now fit."""
        with self._tx(write=True) as conn:
            policy, _ = self._lock_policy(conn)
            row = self._lease_row(conn, token, lock=True)
            if row is None:
                raise LeaseNotFound(f"no lease {token}", token=token)
            lease = lease_from_row(row)
            if lease.status not in (L.ACTIVE, L.WAITING):
                return lease
            values = {
                "status": L.RELEASED.value,
                "released_at": now,
                "peak_vram_mb": peak_vram_mb,
                "success": success,
            }
            changed = conn.execute(
                leases.update()
                .where(leases.c.token == token, leases.c.status == lease.status.value)
                .values(**values)
            ).rowcount
            if changed and lease.status is L.ACTIVE:
                # Booked with the lease's end, in its transaction: counted exactly once. A
                # release after its expiry that no sweep noticed yet is booked only up to
                # the expiry, as the sweep would have booked it.
                ended = _replace(lease, peak_vram_mb=peak_vram_mb)
                end = now if lease.expires_at is None else min(now, lease.expires_at)
                record_usage(conn, ended, end, L.RELEASED.value)
            # Serve the queue only if someone waits: with nobody waiting it would grant
            # nothing, and loading every device for it doubled a release's cost
            # (docs/benchmarks.md). The policy row is locked above either way, so a request
            # that queues meanwhile is served by its own admission after this commits.
            # (Leases past their expiry are left to the sweep, which expires them anyway.)
            if conn.execute(_ANY_WAITING).first():
                self._grant(conn, self._serve(conn, now, limits, policy=policy), now)
            return _replace(lease, **{**values, "status": L.RELEASED})

    def sweep_leases(self, now: datetime, limits: Limits) -> Sweep:
        """The leader's pass: expire leases past their ttl, time out waiters that vanished,
        and grant waiting requests in policy order (ageing moves them up over time)."""
        sweep = Sweep()
        with self._tx(write=False) as conn:
            # Most of the time there is nothing to do: don't take the write lock for it.
            busy = conn.execute(
                sa.select(leases.c.token)
                .where(leases.c.status.in_([L.ACTIVE.value, L.WAITING.value]))
                .limit(1)
            ).first()
        if busy is None:
            return sweep
        with self._tx(write=True) as conn:
            policy, _ = self._lock_policy(conn)
            stale_wait = now - timedelta(seconds=WAIT_GRACE_S)
            abandoned = conn.execute(
                sa.select(leases).where(
                    leases.c.status == L.WAITING.value, leases.c.wait_until < stale_wait
                )
            ).all()
            if abandoned:
                conn.execute(
                    leases.update()
                    .where(
                        leases.c.token.in_([r.token for r in abandoned]),
                        leases.c.status == L.WAITING.value,
                    )
                    .values(status=L.TIMED_OUT.value, released_at=now, reason="waiter gone")
                )
                sweep.timed_out = [lease_from_row(r._mapping) for r in abandoned]
            result = self._serve(conn, now, limits, policy=policy)
            sweep.expired = result.expired
            sweep.granted = self._grant(conn, result, now)
        return sweep

    # -- inside a transaction -----------------------------------------------------------

    def _serve(
        self,
        conn: Connection,
        now: datetime,
        limits: Limits,
        extra: Lease | None = None,
        policy: AdmissionPolicy | None = None,
        keep: str | None = None,
    ) -> Pass:
        """Lock the policy (unless the caller did and passes it), take a snapshot, and
        serve the queue (plus `extra`, a new request, in its place; `keep`, a waiting
        request past its deadline, still in its place)."""
        if policy is None:
            policy, _ = self._lock_policy(conn)
        devices = load_devices(conn)
        rows = conn.execute(
            sa.select(leases).where(leases.c.status.in_([L.ACTIVE.value, L.WAITING.value]))
        ).all()
        current = [lease_from_row(r._mapping) for r in rows]
        # A lease past its expiry holds nothing: mark it expired here, under the lock, so a
        # late heartbeat cannot revive it after its room was given to someone else.
        expired = self._expire(
            conn, [x for x in current if x.is_active and not x.is_live(now)], now
        )
        gone = {lease.token for lease in expired}
        active = [lease for lease in current if lease.is_active and lease.token not in gone]
        waiting = [
            lease
            for lease in current
            if lease.status is L.WAITING
            and (lease.wait_until is None or lease.wait_until >= now or lease.token == keep)
        ]
        if extra is not None:
            waiting.append(extra)
        # Pending evictions, read under the admission lock that `evict_model` takes too
        # (orchestrator/agents.py): a request for a model being unloaded on a node gets no
        # lease there, new or granted from the queue later.
        evicting = evicting_pairs(conn) if any(x.model_id for x in waiting) else set()
        book = Book(devices, active, policy, limits, now, evicting)
        usage = fair_share_usage(conn, policy, waiting, active, now)
        result = serve_queue(book, waiting, policy, usage)
        result.expired = expired
        return result

    @staticmethod
    def _expire(conn: Connection, overdue: list[Lease], now: datetime) -> list[Lease]:
        """Mark overdue leases expired; those a heartbeat renewed meanwhile stay active (one
        UPDATE each, so we know which: under READ COMMITTED a renewal committed while we
        waited on its row lock makes the WHERE fail)."""
        expired = []
        for lease in overdue:
            changed = conn.execute(
                leases.update()
                .where(
                    leases.c.token == lease.token,
                    leases.c.status == L.ACTIVE.value,
                    leases.c.expires_at < now,
                )
                .values(status=L.EXPIRED.value, released_at=now, reason="not heartbeated")
            ).rowcount
            if changed:
                # It held its devices until its expiry, not until this sweep noticed.
                end = min(now, lease.expires_at or now)
                record_usage(conn, lease, end, L.EXPIRED.value)
                expired.append(_replace(lease, status=L.EXPIRED, released_at=now))
        return expired

    def _grant(self, conn: Connection, result: Pass, now: datetime) -> list[Lease]:
        granted = []
        for token, placement in result.granted.items():
            row = self._lease_row(conn, token)
            if row is None:
                continue
            lease = _activate(lease_from_row(row), placement.node, placement.devices, now)
            updated = conn.execute(
                leases.update()
                .where(leases.c.token == token, leases.c.status == L.WAITING.value)
                .values(
                    status=L.ACTIVE.value,
                    node=lease.node,
                    devices=json.dumps(list(lease.devices)),
                    granted_at=now,
                    expires_at=lease.expires_at,
                )
            ).rowcount
            if updated:
                granted.append(lease)
        return granted

    @staticmethod
    def _lease_row(conn: Connection, token: str, lock: bool = False) -> Mapping[Any, Any] | None:
        query = sa.select(leases).where(leases.c.token == token)
        if lock:
            query = query.with_for_update()
        row = conn.execute(query).first()
        return row._mapping if row else None


def _check_live(lease: Lease, now: datetime) -> None:
    if lease.status is L.RELEASED:
        raise LeaseReleased(f"lease {lease.token} was released", token=lease.token)
    expired = lease.status in (L.EXPIRED, L.TIMED_OUT) or (
        lease.status is L.ACTIVE and lease.expires_at is not None and lease.expires_at < now
    )
    if expired:
        ended = lease.expires_at or lease.released_at
        raise LeaseExpired(
            f"lease {lease.token} expired at {ended.isoformat() + 'Z' if ended else 'its ttl'}; "
            "take a new one",
            token=lease.token,
        )


def _activate(lease: Lease, node: str, devices: tuple[int, ...], now: datetime) -> Lease:
    return _replace(
        lease,
        status=L.ACTIVE,
        node=node,
        devices=devices,
        granted_at=now,
        expires_at=now + timedelta(seconds=lease.ttl_s),
    )


def _replace(lease: Lease, **changes: Any) -> Lease:
    if isinstance(changes.get("status"), str):
        changes["status"] = LeaseStatus(changes["status"])
    return replace(lease, **changes)
