"""The GPU inventory side of `SqlStore`: node reports, devices, and the admission policy."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from orchestrator.errors import Conflict
from orchestrator.gpu import Device, Node, NodeReading, health_of
from orchestrator.leases import ADMISSION_POLICY, AdmissionPolicy
from orchestrator.store import dialect
from orchestrator.store.codec import dumps, loads
from orchestrator.store.sql_base import SqlBase
from orchestrator.store.tables import gpu_quarantines, gpus, nodes, policies

# Every admission pass (each lease request and release that serves the queue, the sweep)
# runs these: built once, like `sql_base._JOB_BY_ID`, the SQL unchanged.
_POLICY_LOCKED = sa.select(policies).where(policies.c.name == ADMISSION_POLICY).with_for_update()
_q = gpu_quarantines
_DEVICES = (
    sa.select(gpus, _q.c.since.label("quarantined_since"), _q.c.reason.label("quarantine_reason"))
    .select_from(
        gpus.outerjoin(
            _q, sa.and_(_q.c.node == gpus.c.node, _q.c.idx == gpus.c.idx, _q.c.cleared_at.is_(None))
        )
    )
    .order_by(gpus.c.node, gpus.c.idx)
)


class SqlGpus(SqlBase):
    def report_node(
        self, node: str, reading: NodeReading, now: datetime, temp_limit_c: float
    ) -> None:
        """Store what a node's probe read: the node row, and its devices as they are now
        (devices it no longer has are removed)."""
        node_row = {
            "name": node,
            "nvml_supported": reading.nvml_supported,
            "mps_enabled": reading.mps_enabled,
            "mps": dumps(reading.mps),
            "driver_version": reading.driver_version,
            "error": reading.error,
            "reported_at": now,
        }
        with self._tx(write=True) as conn:
            conn.execute(dialect.upsert(self.engine, nodes, node_row, "name"))
            seen = []
            for d in reading.devices:
                health, why = health_of(d, temp_limit_c)
                row = {
                    "node": node,
                    "idx": d.index,
                    "uuid": d.uuid,
                    "name": d.name[:128],
                    "memory_total_mb": d.memory_total_mb,
                    "memory_used_mb": d.memory_used_mb,
                    "utilization_gpu_pct": d.utilization_gpu_pct,
                    "temperature_c": d.temperature_c,
                    "power_draw_w": d.power_draw_w,
                    "source": reading.source,
                    "health": health,
                    "error": why,
                    "reported_at": now,
                }
                self._upsert_gpu(conn, row)
                seen.append(d.index)
            if reading.error is None:
                # Devices this reading no longer has are gone; a failed read proves nothing.
                conn.execute(gpus.delete().where(gpus.c.node == node, gpus.c.idx.not_in(seen)))

    def _upsert_gpu(self, conn: Connection, row: dict[str, Any]) -> None:
        key = {"node": row["node"], "idx": row["idx"]}
        updated = conn.execute(
            gpus.update()
            .where(gpus.c.node == key["node"], gpus.c.idx == key["idx"])
            .values(**{k: v for k, v in row.items() if k not in key})
        ).rowcount
        if not updated:
            conn.execute(gpus.insert().values(**row))

    def list_devices(self) -> list[Device]:
        with self._tx(write=False) as conn:
            return load_devices(conn)

    def list_nodes(self) -> list[Node]:
        with self._tx(write=False) as conn:
            return [
                Node(
                    name=r.name,
                    nvml_supported=bool(r.nvml_supported),
                    mps_enabled=bool(r.mps_enabled),
                    mps=loads(r.mps) or {},
                    driver_version=r.driver_version,
                    error=r.error,
                    reported_at=r.reported_at,
                )
                for r in conn.execute(sa.select(nodes).order_by(nodes.c.name))
            ]

    # -- the admission policy ------------------------------------------------------------

    def get_policy(self) -> tuple[AdmissionPolicy, int]:
        """The admission policy and its version (0: the defaults, never changed)."""
        with self._tx(write=False) as conn:
            row = conn.execute(
                sa.select(policies).where(policies.c.name == ADMISSION_POLICY)
            ).first()
        return _policy_of(row._mapping if row else None)

    def put_policy(
        self, policy: AdmissionPolicy, now: datetime, actor: str, expected_version: int | None
    ) -> int:
        """Replace the policy; with `expected_version`, only if it is still that version
        (`Conflict` otherwise). Returns the new version."""
        body = policy.model_dump_json()
        with self._tx(write=True) as conn:
            row = conn.execute(
                sa.select(policies.c.version)
                .where(policies.c.name == ADMISSION_POLICY)
                .with_for_update()
            ).first()
            version = row.version if row else 0
            if expected_version is not None and expected_version != version:
                raise Conflict(
                    f"the policy is at version {version}, not {expected_version}",
                    version=version,
                )
            values = {"body": body, "version": version + 1, "updated_at": now, "updated_by": actor}
            if row is None:
                conn.execute(policies.insert().values(name=ADMISSION_POLICY, **values))
            else:
                conn.execute(
                    policies.update().where(policies.c.name == ADMISSION_POLICY).values(**values)
                )
        return version + 1

    def _lock_policy(self, conn: Connection) -> tuple[AdmissionPolicy, int]:
        """Read the policy and lock its row: every admission decision takes this lock, so
        grants are serialised and never over-commit (SQLite: BEGIN IMMEDIATE already is)."""
        row = conn.execute(_POLICY_LOCKED).first()
        return _policy_of(row._mapping if row else None)


def _policy_of(row: Mapping[Any, Any] | None) -> tuple[AdmissionPolicy, int]:
    if row is None:
        return AdmissionPolicy(), 0
    return AdmissionPolicy.model_validate_json(row["body"]), int(row["version"])


def load_devices(conn: Connection) -> list[Device]:
    """Every device, with its quarantine (when not cleared): what admission judges."""
    return [device_from_row(r._mapping) for r in conn.execute(_DEVICES)]


def device_from_row(row: Mapping[Any, Any]) -> Device:
    return Device(
        node=row["node"],
        index=row["idx"],
        name=row["name"],
        memory_total_mb=row["memory_total_mb"],
        memory_used_mb=row["memory_used_mb"],
        source=row["source"],
        health=row["health"],
        reported_at=row["reported_at"],
        uuid=row["uuid"],
        utilization_gpu_pct=row["utilization_gpu_pct"],
        temperature_c=row["temperature_c"],
        power_draw_w=row["power_draw_w"],
        error=row["error"],
        quarantined_since=row.get("quarantined_since"),
        quarantine_reason=row.get("quarantine_reason"),
    )
