"""API tokens: hashed bearer tokens with a role and an owner (issue 6), and the owner who
answers for each GPU lease (orchestrator_leases.owner).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _timestamp() -> sa.types.TypeEngine[datetime]:
    return (
        sa.DateTime()
        .with_variant(mysql.DATETIME(fsp=6), "mariadb")
        .with_variant(mysql.DATETIME(fsp=6), "mysql")
    )


def upgrade() -> None:
    op.create_table(
        "orchestrator_api_tokens",
        sa.Column("id", sa.String(length=16), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column(
            "owner",
            sa.String(length=128)
            .with_variant(mysql.VARCHAR(collation="utf8mb4_nopad_bin", length=128), "mariadb")
            .with_variant(mysql.VARCHAR(collation="utf8mb4_nopad_bin", length=128), "mysql"),
            nullable=False,
        ),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.Column("revoked_at", _timestamp(), nullable=True),
        sa.Column("last_used_at", _timestamp(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_orchestrator_api_tokens")),
        mysql_charset="utf8mb4",
        mysql_engine="InnoDB",
    )
    op.create_index(
        op.f("ix_orchestrator_api_tokens_token_hash"),
        "orchestrator_api_tokens",
        ["token_hash"],
        unique=True,
    )
    with op.batch_alter_table("orchestrator_leases") as batch:
        batch.add_column(
            sa.Column(
                "owner",
                sa.String(length=128)
                .with_variant(mysql.VARCHAR(collation="utf8mb4_nopad_bin", length=128), "mariadb")
                .with_variant(mysql.VARCHAR(collation="utf8mb4_nopad_bin", length=128), "mysql"),
                nullable=False,
                server_default="anonymous",
            )
        )


def downgrade() -> None:
    op.drop_index(
        op.f("ix_orchestrator_api_tokens_token_hash"), table_name="orchestrator_api_tokens"
    )
    op.drop_table("orchestrator_api_tokens")
    with op.batch_alter_table("orchestrator_leases") as batch:
        batch.drop_column("owner")
