"""Leadership (orchestrator_leader) and the indexes of the reclaimer and the relay.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "orchestrator_leader",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("leader_id", sa.String(length=128), nullable=True),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column(
            "since",
            sa.DateTime()
            .with_variant(mysql.DATETIME(fsp=6), "mariadb")
            .with_variant(mysql.DATETIME(fsp=6), "mysql"),
            nullable=True,
        ),
        sa.Column(
            "expires_at",
            sa.DateTime()
            .with_variant(mysql.DATETIME(fsp=6), "mariadb")
            .with_variant(mysql.DATETIME(fsp=6), "mysql"),
            nullable=True,
        ),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_orchestrator_leader")),
        mysql_charset="utf8mb4",
        mysql_engine="InnoDB",
    )
    # The one leadership row; every election updates it conditionally.
    leader = sa.table("orchestrator_leader", sa.column("name"), sa.column("epoch"))
    op.bulk_insert(leader, [{"name": "leader", "epoch": 0}])
    with op.batch_alter_table("orchestrator_jobs", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_orchestrator_jobs_status_heartbeat_at"),
            ["status", "heartbeat_at"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_orchestrator_jobs_status_published_at"),
            ["status", "published_at"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("orchestrator_jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_orchestrator_jobs_status_published_at"))
        batch_op.drop_index(batch_op.f("ix_orchestrator_jobs_status_heartbeat_at"))

    op.drop_table("orchestrator_leader")
