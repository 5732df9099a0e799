"""A GPU lease as a row of `orchestrator_leases`, and back."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from orchestrator.jobs import Priority
from orchestrator.leases import Lease, LeaseStatus


def lease_row(lease: Lease) -> dict[str, Any]:
    return {
        "token": lease.token,
        "agent": lease.agent,
        "owner": lease.owner,
        "operation": lease.operation,
        "model_id": lease.model_id,
        "node": lease.node,
        "devices": json.dumps(list(lease.devices)) if lease.devices else None,
        "est_vram_mb": lease.est_vram_mb,
        "gpu_count": lease.gpu_count,
        "priority": int(lease.priority),
        "status": lease.status.value,
        "job_id": lease.job_id,
        "ttl_s": lease.ttl_s,
        "queued_at": lease.queued_at,
        "created_at": lease.created_at,
        "wait_until": lease.wait_until,
        "granted_at": lease.granted_at,
        "expires_at": lease.expires_at,
        "released_at": lease.released_at,
        "used_vram_mb": lease.used_vram_mb,
        "peak_vram_mb": lease.peak_vram_mb,
        "success": lease.success,
        "reason": lease.reason,
        "estimated_duration_s": lease.estimated_duration_s,
        "attempt": lease.attempt,
    }


def lease_from_row(row: Mapping[Any, Any]) -> Lease:
    return Lease(
        token=row["token"],
        agent=row["agent"],
        owner=row["owner"],
        status=LeaseStatus(row["status"]),
        est_vram_mb=row["est_vram_mb"],
        gpu_count=row["gpu_count"],
        priority=Priority(row["priority"]),
        ttl_s=row["ttl_s"],
        queued_at=row["queued_at"],
        created_at=row["created_at"],
        node=row["node"],
        devices=tuple(json.loads(row["devices"])) if row["devices"] else (),
        operation=row["operation"],
        model_id=row["model_id"],
        job_id=row["job_id"],
        wait_until=row["wait_until"],
        granted_at=row["granted_at"],
        expires_at=row["expires_at"],
        released_at=row["released_at"],
        used_vram_mb=row["used_vram_mb"],
        peak_vram_mb=row["peak_vram_mb"],
        success=None if row["success"] is None else bool(row["success"]),
        reason=row["reason"],
        estimated_duration_s=row["estimated_duration_s"],
        attempt=row["attempt"],
    )
