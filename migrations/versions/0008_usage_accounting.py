"""GPU accounting: GPU-seconds and VRAM-seconds per lease and per attempt (issue 8), and
what the admission orders need of a lease (its estimated duration, a job lease's attempt).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = (
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
    with op.batch_alter_table("orchestrator_leases") as batch:
        batch.add_column(sa.Column("estimated_duration_s", sa.Float(), nullable=True))
        batch.add_column(sa.Column("attempt", sa.Integer(), nullable=True))
    op.create_table(
        "orchestrator_usage",
        sa.Column("lease_token", sa.String(length=32), nullable=False),
        sa.Column("owner", _exact(128), nullable=False),
        sa.Column("agent", _exact(128), nullable=False),
        sa.Column("type", sa.String(length=128), nullable=True),
        sa.Column("job_id", sa.String(length=36), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=True),
        sa.Column("node", sa.String(length=128), nullable=True),
        sa.Column("gpu_count", sa.Integer(), nullable=False),
        sa.Column("est_vram_mb", sa.Integer(), nullable=False),
        sa.Column("peak_vram_mb", sa.Integer(), nullable=True),
        sa.Column("started_at", TIMESTAMP, nullable=False),
        sa.Column("ended_at", TIMESTAMP, nullable=False),
        sa.Column("ended", sa.String(length=16), nullable=False),
        sa.Column("gpu_seconds", sa.Double(), nullable=False),
        sa.Column("vram_mb_seconds_est", sa.Double(), nullable=False),
        sa.Column("vram_mb_seconds_peak", sa.Double(), nullable=True),
        sa.PrimaryKeyConstraint("lease_token", name=op.f("pk_orchestrator_usage")),
        mysql_charset="utf8mb4",
        mysql_engine="InnoDB",
    )
    op.create_index(
        op.f("ix_orchestrator_usage_ended_at"), "orchestrator_usage", ["ended_at"], unique=False
    )
    op.create_index(
        op.f("ix_orchestrator_usage_owner_ended_at"),
        "orchestrator_usage",
        ["owner", "ended_at"],
        unique=False,
    )
    op.create_index(
        op.f("ix_orchestrator_usage_job_id"), "orchestrator_usage", ["job_id"], unique=False
    )


def downgrade() -> None:
    op.drop_table("orchestrator_usage")
    with op.batch_alter_table("orchestrator_leases") as batch:
        batch.drop_column("attempt")
        batch.drop_column("estimated_duration_s")
