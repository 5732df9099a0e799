"""GPU health and agents: device faults and quarantines, registered agents, model evictions
(issue 8).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE_OPTIONS = {"mysql_charset": "utf8mb4", "mysql_engine": "InnoDB"}


def _timestamp() -> sa.types.TypeEngine[datetime]:
    return (
        sa.DateTime()
        .with_variant(mysql.DATETIME(fsp=6), "mariadb")
        .with_variant(mysql.DATETIME(fsp=6), "mysql")
    )


def _exact(length: int) -> sa.types.TypeEngine[str]:
    return (
        sa.String(length=length)
        .with_variant(mysql.VARCHAR(collation="utf8mb4_nopad_bin", length=length), "mariadb")
        .with_variant(mysql.VARCHAR(collation="utf8mb4_nopad_bin", length=length), "mysql")
    )


def upgrade() -> None:
    op.create_table(
        "orchestrator_gpu_faults",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("node", sa.String(length=128), nullable=False),
        sa.Column("idx", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("job_id", sa.String(length=36), nullable=True),
        sa.Column("at", _timestamp(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_orchestrator_gpu_faults")),
        **TABLE_OPTIONS,
    )
    op.create_index(
        op.f("ix_orchestrator_gpu_faults_node_idx_at"),
        "orchestrator_gpu_faults",
        ["node", "idx", "at"],
    )
    op.create_table(
        "orchestrator_gpu_quarantines",
        sa.Column("node", sa.String(length=128), nullable=False),
        sa.Column("idx", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("since", _timestamp(), nullable=False),
        sa.Column("cleared_at", _timestamp(), nullable=True),
        sa.Column("cleared_by", sa.String(length=128), nullable=True),
        sa.PrimaryKeyConstraint("node", "idx", name=op.f("pk_orchestrator_gpu_quarantines")),
        **TABLE_OPTIONS,
    )
    op.create_table(
        "orchestrator_agents",
        sa.Column("name", _exact(128), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("capabilities", sa.Text(), nullable=False),
        sa.Column("requires_models", sa.Text(), nullable=False),
        sa.Column("owner", _exact(128), nullable=False),
        sa.Column("registered_at", _timestamp(), nullable=False),
        sa.Column("updated_at", _timestamp(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_orchestrator_agents")),
        **TABLE_OPTIONS,
    )
    op.create_table(
        "orchestrator_model_evictions",
        sa.Column("node", sa.String(length=128), nullable=False),
        sa.Column("model_id", _exact(255), nullable=False),
        sa.Column("requested_at", _timestamp(), nullable=False),
        sa.Column("requested_by", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("node", "model_id", name=op.f("pk_orchestrator_model_evictions")),
        **TABLE_OPTIONS,
    )


def downgrade() -> None:
    op.drop_table("orchestrator_model_evictions")
    op.drop_table("orchestrator_agents")
    op.drop_table("orchestrator_gpu_quarantines")
    op.drop_index(op.f("ix_orchestrator_gpu_faults_node_idx_at"), "orchestrator_gpu_faults")
    op.drop_table("orchestrator_gpu_faults")
