"""An index for /metrics: job counts by status, type and band, read from the index alone.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "ix_orchestrator_jobs_status_type_priority"


def upgrade() -> None:
    op.create_index(INDEX, "orchestrator_jobs", ["status", "type", "priority"])


def downgrade() -> None:
    op.drop_index(INDEX, table_name="orchestrator_jobs")
