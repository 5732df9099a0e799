"""Owner and idempotency key compared byte for byte on MariaDB (utf8mb4_nopad_bin).

Its default collation ignores case, accents and trailing spaces.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = [("owner", 128, False), ("idempotency_key", 255, True)]


def _is_mariadb() -> bool:
    return op.get_bind().dialect.name in ("mysql", "mariadb")


def upgrade() -> None:
    if not _is_mariadb():
        return  # SQLite compares strings byte for byte already
    for name, length, nullable in COLUMNS:
        op.alter_column(
            "orchestrator_jobs",
            name,
            existing_type=sa.String(length),
            type_=mysql.VARCHAR(length, collation="utf8mb4_nopad_bin"),
            existing_nullable=nullable,
        )


def downgrade() -> None:
    if not _is_mariadb():
        return
    for name, length, nullable in COLUMNS:
        op.alter_column(
            "orchestrator_jobs",
            name,
            existing_type=mysql.VARCHAR(length, collation="utf8mb4_nopad_bin"),
            type_=mysql.VARCHAR(length, collation="utf8mb4_general_ci"),
            existing_nullable=nullable,
        )
