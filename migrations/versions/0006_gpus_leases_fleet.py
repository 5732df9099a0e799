"""GPUs, leases and the fleet: nodes and their devices, GPU leases, the admission policy,
worker pools and worker registrations, model preloads and warm models, and the GPU needs
of a job (orchestrator_jobs.gpu).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "orchestrator_gpus",
        sa.Column("node", sa.String(length=128), nullable=False),
        sa.Column("idx", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("uuid", sa.String(length=96), nullable=True),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("memory_total_mb", sa.Integer(), nullable=False),
        sa.Column("memory_used_mb", sa.Integer(), nullable=False),
        sa.Column("utilization_gpu_pct", sa.Float(), nullable=True),
        sa.Column("temperature_c", sa.Float(), nullable=True),
        sa.Column("power_draw_w", sa.Float(), nullable=True),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("health", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column(
            "reported_at",
            sa.DateTime()
            .with_variant(mysql.DATETIME(fsp=6), "mariadb")
            .with_variant(mysql.DATETIME(fsp=6), "mysql"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("node", "idx", name=op.f("pk_orchestrator_gpus")),
        mysql_charset="utf8mb4",
        mysql_engine="InnoDB",
    )
    op.create_table(
        "orchestrator_leases",
        sa.Column("token", sa.String(length=32), nullable=False),
        sa.Column(
            "agent",
            sa.String(length=128)
            .with_variant(mysql.VARCHAR(collation="utf8mb4_nopad_bin", length=128), "mariadb")
            .with_variant(mysql.VARCHAR(collation="utf8mb4_nopad_bin", length=128), "mysql"),
            nullable=False,
        ),
        sa.Column("operation", sa.String(length=128), nullable=True),
        sa.Column("model_id", sa.String(length=255), nullable=True),
        sa.Column("node", sa.String(length=128), nullable=True),
        sa.Column("devices", sa.String(length=255), nullable=True),
        sa.Column("est_vram_mb", sa.Integer(), nullable=False),
        sa.Column("gpu_count", sa.Integer(), nullable=False),
        sa.Column("priority", sa.SmallInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=True),
        sa.Column("ttl_s", sa.Float(), nullable=False),
        sa.Column(
            "queued_at",
            sa.DateTime()
            .with_variant(mysql.DATETIME(fsp=6), "mariadb")
            .with_variant(mysql.DATETIME(fsp=6), "mysql"),
            nullable=False,
        ),
        sa.Column(
            "created_at",
            sa.DateTime()
            .with_variant(mysql.DATETIME(fsp=6), "mariadb")
            .with_variant(mysql.DATETIME(fsp=6), "mysql"),
            nullable=False,
        ),
        sa.Column(
            "wait_until",
            sa.DateTime()
            .with_variant(mysql.DATETIME(fsp=6), "mariadb")
            .with_variant(mysql.DATETIME(fsp=6), "mysql"),
            nullable=True,
        ),
        sa.Column(
            "granted_at",
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
        sa.Column(
            "released_at",
            sa.DateTime()
            .with_variant(mysql.DATETIME(fsp=6), "mariadb")
            .with_variant(mysql.DATETIME(fsp=6), "mysql"),
            nullable=True,
        ),
        sa.Column("used_vram_mb", sa.Integer(), nullable=True),
        sa.Column("peak_vram_mb", sa.Integer(), nullable=True),
        sa.Column("success", sa.Boolean(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("token", name=op.f("pk_orchestrator_leases")),
        mysql_charset="utf8mb4",
        mysql_engine="InnoDB",
    )
    with op.batch_alter_table("orchestrator_leases", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_orchestrator_leases_job_id"), ["job_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_orchestrator_leases_status_expires_at"),
            ["status", "expires_at"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_orchestrator_leases_status_queued_at"),
            ["status", "queued_at"],
            unique=False,
        )

    op.create_table(
        "orchestrator_model_preloads",
        sa.Column(
            "model_id",
            sa.String(length=255)
            .with_variant(mysql.VARCHAR(collation="utf8mb4_nopad_bin", length=255), "mariadb")
            .with_variant(mysql.VARCHAR(collation="utf8mb4_nopad_bin", length=255), "mysql"),
            nullable=False,
        ),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=True),
        sa.Column("node", sa.String(length=128), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column(
            "requested_at",
            sa.DateTime()
            .with_variant(mysql.DATETIME(fsp=6), "mariadb")
            .with_variant(mysql.DATETIME(fsp=6), "mysql"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime()
            .with_variant(mysql.DATETIME(fsp=6), "mariadb")
            .with_variant(mysql.DATETIME(fsp=6), "mysql"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("model_id", name=op.f("pk_orchestrator_model_preloads")),
        mysql_charset="utf8mb4",
        mysql_engine="InnoDB",
    )
    op.create_table(
        "orchestrator_nodes",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("nvml_supported", sa.Boolean(), nullable=False),
        sa.Column("mps_enabled", sa.Boolean(), nullable=False),
        sa.Column("mps", sa.Text(), nullable=True),
        sa.Column("driver_version", sa.String(length=64), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column(
            "reported_at",
            sa.DateTime()
            .with_variant(mysql.DATETIME(fsp=6), "mariadb")
            .with_variant(mysql.DATETIME(fsp=6), "mysql"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_orchestrator_nodes")),
        mysql_charset="utf8mb4",
        mysql_engine="InnoDB",
    )
    op.create_table(
        "orchestrator_policies",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column(
            "body",
            sa.Text()
            .with_variant(mysql.MEDIUMTEXT(), "mariadb")
            .with_variant(mysql.MEDIUMTEXT(), "mysql"),
            nullable=False,
        ),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime()
            .with_variant(mysql.DATETIME(fsp=6), "mariadb")
            .with_variant(mysql.DATETIME(fsp=6), "mysql"),
            nullable=False,
        ),
        sa.Column("updated_by", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_orchestrator_policies")),
        mysql_charset="utf8mb4",
        mysql_engine="InnoDB",
    )
    # The admission policy's row exists from the start: every grant locks it (FOR UPDATE),
    # which serialises admission; a missing row would lock nothing.
    policy = sa.table(
        "orchestrator_policies",
        sa.column("name"),
        sa.column("body"),
        sa.column("version"),
        sa.column("updated_at", sa.DateTime()),
        sa.column("updated_by"),
    )
    op.bulk_insert(
        policy,
        [
            {
                "name": "admission",
                "body": "{}",
                "version": 0,
                "updated_at": datetime(1970, 1, 1),  # never changed
                "updated_by": "migration",
            }
        ],
    )
    op.create_table(
        "orchestrator_warm_models",
        sa.Column("node", sa.String(length=128), nullable=False),
        sa.Column(
            "model_id",
            sa.String(length=255)
            .with_variant(mysql.VARCHAR(collation="utf8mb4_nopad_bin", length=255), "mariadb")
            .with_variant(mysql.VARCHAR(collation="utf8mb4_nopad_bin", length=255), "mysql"),
            nullable=False,
        ),
        sa.Column("worker_id", sa.String(length=128), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=True),
        sa.Column(
            "loaded_at",
            sa.DateTime()
            .with_variant(mysql.DATETIME(fsp=6), "mariadb")
            .with_variant(mysql.DATETIME(fsp=6), "mysql"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("node", "model_id", name=op.f("pk_orchestrator_warm_models")),
        mysql_charset="utf8mb4",
        mysql_engine="InnoDB",
    )
    with op.batch_alter_table("orchestrator_warm_models", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_orchestrator_warm_models_model_id"), ["model_id"], unique=False
        )

    op.create_table(
        "orchestrator_workers",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("node", sa.String(length=128), nullable=False),
        sa.Column("pool", sa.String(length=64), nullable=True),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("job_types", sa.Text(), nullable=False),
        sa.Column("concurrency", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("current_jobs", sa.Text(), nullable=True),
        sa.Column(
            "started_at",
            sa.DateTime()
            .with_variant(mysql.DATETIME(fsp=6), "mariadb")
            .with_variant(mysql.DATETIME(fsp=6), "mysql"),
            nullable=False,
        ),
        sa.Column(
            "heartbeat_at",
            sa.DateTime()
            .with_variant(mysql.DATETIME(fsp=6), "mariadb")
            .with_variant(mysql.DATETIME(fsp=6), "mysql"),
            nullable=False,
        ),
        sa.Column(
            "stopped_at",
            sa.DateTime()
            .with_variant(mysql.DATETIME(fsp=6), "mariadb")
            .with_variant(mysql.DATETIME(fsp=6), "mysql"),
            nullable=True,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_orchestrator_workers")),
        mysql_charset="utf8mb4",
        mysql_engine="InnoDB",
    )
    with op.batch_alter_table("orchestrator_workers", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_orchestrator_workers_pool_status"), ["pool", "status"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_orchestrator_workers_status_heartbeat_at"),
            ["status", "heartbeat_at"],
            unique=False,
        )

    op.create_table(
        "worker_pools",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("node", sa.String(length=128), nullable=True),
        sa.Column("job_types", sa.Text(), nullable=False),
        sa.Column("model_id", sa.String(length=255), nullable=True),
        sa.Column("concurrency", sa.Integer(), nullable=False),
        sa.Column("desired", sa.Integer(), nullable=False),
        sa.Column("running", sa.Integer(), nullable=False),
        sa.Column("min_warm", sa.Integer(), nullable=False),
        sa.Column("max_workers", sa.Integer(), nullable=False),
        sa.Column("idle_timeout_s", sa.Float(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column(
            "last_busy_at",
            sa.DateTime()
            .with_variant(mysql.DATETIME(fsp=6), "mariadb")
            .with_variant(mysql.DATETIME(fsp=6), "mysql"),
            nullable=True,
        ),
        sa.Column(
            "created_at",
            sa.DateTime()
            .with_variant(mysql.DATETIME(fsp=6), "mariadb")
            .with_variant(mysql.DATETIME(fsp=6), "mysql"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime()
            .with_variant(mysql.DATETIME(fsp=6), "mariadb")
            .with_variant(mysql.DATETIME(fsp=6), "mysql"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_worker_pools")),
        mysql_charset="utf8mb4",
        mysql_engine="InnoDB",
    )
    with op.batch_alter_table("orchestrator_jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("gpu", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("orchestrator_jobs", schema=None) as batch_op:
        batch_op.drop_column("gpu")

    op.drop_table("worker_pools")
    with op.batch_alter_table("orchestrator_workers", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_orchestrator_workers_status_heartbeat_at"))
        batch_op.drop_index(batch_op.f("ix_orchestrator_workers_pool_status"))

    op.drop_table("orchestrator_workers")
    with op.batch_alter_table("orchestrator_warm_models", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_orchestrator_warm_models_model_id"))

    op.drop_table("orchestrator_warm_models")
    op.drop_table("orchestrator_policies")
    op.drop_table("orchestrator_nodes")
    op.drop_table("orchestrator_model_preloads")
    with op.batch_alter_table("orchestrator_leases", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_orchestrator_leases_status_queued_at"))
        batch_op.drop_index(batch_op.f("ix_orchestrator_leases_status_expires_at"))
        batch_op.drop_index(batch_op.f("ix_orchestrator_leases_job_id"))

    op.drop_table("orchestrator_leases")
    op.drop_table("orchestrator_gpus")
