"""Indexes for GET /queue/statistics (outcomes by finish time, waits by submit time) and
for the usage metrics (by owner and type).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FINISHED = "ix_orchestrator_jobs_status_finished_at_type"
SUBMITTED = "ix_orchestrator_jobs_created_at_type"


USAGE_BY_TYPE = "ix_orchestrator_usage_owner_type"


def upgrade() -> None:
    op.create_index(FINISHED, "orchestrator_jobs", ["status", "finished_at", "type"])
    op.create_index(SUBMITTED, "orchestrator_jobs", ["created_at", "type"])
    # The usage metrics' GROUP BY owner, type at every scrape.
    op.create_index(USAGE_BY_TYPE, "orchestrator_usage", ["owner", "type"])


def downgrade() -> None:
    op.drop_index(USAGE_BY_TYPE, table_name="orchestrator_usage")
    op.drop_index(SUBMITTED, table_name="orchestrator_jobs")
    op.drop_index(FINISHED, table_name="orchestrator_jobs")
