"""Node names and model ids compare byte for byte on MariaDB too (utf8mb4_nopad_bin).

MariaDB's default collation is case-insensitive, so `Node-1` and `node-1` were one node there
and two on SQLite (and a lease for model `Org/Model` matched an eviction of `org/model`).
SQLite already compares bytes: nothing changes there.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (table, column, length, nullable)
COLUMNS = [
    ("orchestrator_nodes", "name", 128, False),
    ("orchestrator_gpus", "node", 128, False),
    ("orchestrator_leases", "node", 128, True),
    ("orchestrator_leases", "model_id", 255, True),
    ("orchestrator_usage", "node", 128, True),
    ("worker_pools", "node", 128, True),
    ("worker_pools", "model_id", 255, True),
    ("orchestrator_workers", "node", 128, False),
    ("orchestrator_model_preloads", "node", 128, True),
    ("orchestrator_warm_models", "node", 128, False),
    ("orchestrator_gpu_faults", "node", 128, False),
    ("orchestrator_gpu_quarantines", "node", 128, False),
    ("orchestrator_model_evictions", "node", 128, False),
]


def _modify(collation: str | None) -> None:
    if op.get_bind().dialect.name not in ("mysql", "mariadb"):
        return
    for table, column, length, nullable in COLUMNS:
        collate = f" COLLATE {collation}" if collation else ""
        null = "NULL" if nullable else "NOT NULL"
        op.execute(f"ALTER TABLE {table} MODIFY {column} VARCHAR({length}){collate} {null}")


def upgrade() -> None:
    _modify("utf8mb4_nopad_bin")


def downgrade() -> None:
    _modify(None)
