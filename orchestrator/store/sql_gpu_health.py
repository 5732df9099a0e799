"""The GPU health side of `SqlStore`: device faults, quarantines, OOM-raised estimates."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from orchestrator.errors import NotFound
from orchestrator.gpu_health import FaultRules, GpuFault, Quarantine
from orchestrator.jobs import ACTIVE_STATUSES, Claim, GpuNeeds
from orchestrator.store.codec import dumps
from orchestrator.store.sql_base import SqlBase
from orchestrator.store.sql_models import _once_more_on_duplicate
from orchestrator.store.tables import gpu_faults, gpu_quarantines, gpus

MAX_DETAIL_CHARS = 2000


class SqlGpuHealth(SqlBase):
    def record_gpu_fault(
        self, fault: GpuFault, now: datetime, rules: FaultRules
    ) -> Quarantine | None:
        """Store a fault; when it makes enough of its kind within the window (counted since
        the device was last cleared), quarantine the device. Returns the new quarantine."""

        def run() -> Quarantine | None:
            with self._tx(write=True) as conn:
                row = _quarantine_row(conn, fault.node, fault.index, lock=True)
                if row is not None and row["cleared_at"] is None:
                    # Already quarantined: a broken device reporting every few seconds
                    # must not grow the table while it waits for an admin.
                    return None
                conn.execute(
                    gpu_faults.insert().values(
                        node=fault.node,
                        idx=fault.index,
                        kind=fault.kind.value,
                        detail=fault.detail[:MAX_DETAIL_CHARS],
                        job_id=fault.job_id,
                        at=now,
                    )
                )
                threshold = rules.threshold(fault.kind)
                if threshold <= 0:
                    return None
                since = now - timedelta(seconds=rules.window_s)
                if row is not None and row["cleared_at"] is not None:
                    since = max(since, row["cleared_at"])
                # Faults of a job count once (its retries on the same card are one piece of
                # evidence); NVML faults have no job, and each counts.
                no_job = sa.case((gpu_faults.c.job_id.is_(None), 1), else_=0)
                count = conn.execute(
                    sa.select(
                        sa.func.count(sa.distinct(gpu_faults.c.job_id))
                        + sa.func.coalesce(sa.func.sum(no_job), 0)
                    )
                    .select_from(gpu_faults)
                    .where(
                        gpu_faults.c.node == fault.node,
                        gpu_faults.c.idx == fault.index,
                        gpu_faults.c.kind == fault.kind.value,
                        gpu_faults.c.at > since,
                    )
                ).scalar_one()
                count = int(count or 0)
                if count < threshold:
                    return None
                reason = (
                    f"{count} {fault.kind.value} faults within {rules.window_s:g}s; "
                    f"last: {fault.detail}"
                )[:MAX_DETAIL_CHARS]
                values = {"reason": reason, "since": now, "cleared_at": None, "cleared_by": None}
                if row is None:
                    conn.execute(
                        gpu_quarantines.insert().values(node=fault.node, idx=fault.index, **values)
                    )
                else:
                    conn.execute(_where(gpu_quarantines.update(), fault.node, fault.index), values)
                return Quarantine(fault.node, fault.index, reason, now)

        return _once_more_on_duplicate(run)

    def list_quarantines(self, *, include_cleared: bool = False) -> list[Quarantine]:
        query = sa.select(gpu_quarantines).order_by(gpu_quarantines.c.node, gpu_quarantines.c.idx)
        if not include_cleared:
            query = query.where(gpu_quarantines.c.cleared_at.is_(None))
        with self._tx(write=False) as conn:
            return [_quarantine_of(r._mapping) for r in conn.execute(query)]

    def clear_quarantine(
        self, node: str, index: int, now: datetime, actor: str
    ) -> Quarantine | None:
        """Lift a device's quarantine (its older faults stop counting); the quarantine as it
        was, or None when it was not quarantined. `NotFound` for a device never seen."""
        with self._tx(write=True) as conn:
            row = _quarantine_row(conn, node, index, lock=True)
            if row is None or row["cleared_at"] is not None:
                known = conn.execute(
                    sa.select(gpus.c.idx).where(gpus.c.node == node, gpus.c.idx == index)
                ).first()
                if known is None and row is None:
                    raise NotFound(f"no GPU {index} on node {node}", node=node, index=index)
                return None
            conn.execute(
                _where(gpu_quarantines.update(), node, index),
                {"cleared_at": now, "cleared_by": actor[:128]},
            )
            return _quarantine_of(row)

    def raise_gpu_estimate(
        self, claim: Claim, gpu: GpuNeeds, now: datetime, detail: dict[str, Any]
    ) -> bool:
        """Store the job's new GPU needs (a larger estimate, devices to avoid) while `claim`
        still holds it, with a `vram_estimate_raised` event; False when fenced off."""
        with self._tx(write=True) as conn:
            row = self._locked_job(conn, claim.job.id)
            if row is None or row["claim_token"] != claim.token:
                return False
            if row["status"] not in ACTIVE_STATUSES:
                return False
            self._set(conn, claim.job.id, {"gpu": dumps(gpu.as_dict()), "updated_at": now})
            self._event(
                conn,
                claim.job.id,
                now,
                "vram_estimate_raised",
                status=None,
                attempt=claim.attempt,
                actor=claim.job.worker_id or "worker",
                detail=detail,
            )
            return True


def _where(stmt: Any, node: str, index: int) -> Any:
    return stmt.where(gpu_quarantines.c.node == node, gpu_quarantines.c.idx == index)


def _quarantine_row(
    conn: Connection, node: str, index: int, *, lock: bool = False
) -> Mapping[Any, Any] | None:
    query = _where(sa.select(gpu_quarantines), node, index)
    if lock:
        query = query.with_for_update()
    row = conn.execute(query).first()
    return None if row is None else row._mapping


def _quarantine_of(row: Mapping[Any, Any]) -> Quarantine:
    return Quarantine(
        node=row["node"],
        index=row["idx"],
        reason=row["reason"],
        since=row["since"],
        cleared_at=row["cleared_at"],
        cleared_by=row["cleared_by"],
    )
