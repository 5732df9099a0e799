"""API tokens: hashed bearer tokens with a role and an owner (issue 6), and the owner who
answers for each GPU lease (orchestrator_leases.owner).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
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
    with op.batch_alter_table("orchestrator_leases") as batch:
        batch.drop_column("owner")
