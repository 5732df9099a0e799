"""The schema, as SQLAlchemy Core tables. Alembic migrations must produce exactly this."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# Microsecond timestamps on MariaDB (its DATETIME defaults to whole seconds).
Timestamp = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
# Payloads and results up to 16 MiB on MariaDB (TEXT stops at 64 KiB).
LongText = sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")
# SQLite autoincrements only an INTEGER PRIMARY KEY.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def ExactString(length: int) -> sa.types.TypeEngine[str]:
    """A string compared byte for byte. MariaDB's default collation is case- and
    accent-insensitive: "Req-1" and "req-1 " would collide in a unique key there but not on
    SQLite, and the idempotency lookup would miss the row the index sees."""
    return sa.String(length).with_variant(
        mysql.VARCHAR(length, collation="utf8mb4_nopad_bin"), "mysql", "mariadb"
    )


jobs = sa.Table(
    "orchestrator_jobs",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("type", sa.String(64), nullable=False),
    sa.Column("owner", ExactString(128), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("priority", sa.SmallInteger(), nullable=False),
    sa.Column("payload", LongText, nullable=False),
    sa.Column("attempts", sa.Integer(), nullable=False),
    sa.Column("max_attempts", sa.Integer(), nullable=False),
    sa.Column("timeout_s", sa.Float(), nullable=False),
    sa.Column("idempotency_key", ExactString(255), nullable=True),
    sa.Column("request_hash", sa.String(64), nullable=True),
    # Not before this time: the run_at/delay of a submit, or the backoff of a retry.
    sa.Column("available_at", Timestamp, nullable=False),
    # When its current attempt's message was handed to Redis; NULL: still to publish.
    sa.Column("published_at", Timestamp, nullable=True),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False),
    sa.Column("started_at", Timestamp, nullable=True),
    sa.Column("finished_at", Timestamp, nullable=True),
    sa.Column("heartbeat_at", Timestamp, nullable=True),
    sa.Column("worker_id", sa.String(128), nullable=True),
    # Fencing token of the current claim: every write of an attempt's outcome must match it.
    sa.Column("claim_token", sa.String(32), nullable=True),
    sa.Column("cancel_requested", sa.Boolean(), nullable=False),
    sa.Column("result", LongText, nullable=True),
    sa.Column("error", sa.Text(), nullable=True),
    sa.Column("progress", sa.Text(), nullable=True),
    # JSON {"est_vram_mb", "gpu_count", "model_id"}: the lease its handler needs; NULL: none.
    sa.Column("gpu", sa.Text(), nullable=True),
    sa.Index(None, "owner", "idempotency_key", unique=True),
    sa.Index(None, "published_at", "available_at"),
    sa.Index(None, "status", "type", "id"),
    sa.Index(None, "type", "id"),
    # The reclaimer: running jobs whose heartbeat is older than the visibility timeout.
    sa.Index(None, "status", "heartbeat_at"),
    # The relay: waiting jobs published a while ago, to check their message still exists.
    sa.Index(None, "status", "published_at"),
    # /metrics: job counts by status, type and band, read from the index alone.
    sa.Index(None, "status", "type", "priority"),
    # GET /queue/statistics: outcomes by finish time, and waits of jobs submitted in a
    # window, each a range scan of that window alone (migration 0010).
    sa.Index(None, "status", "finished_at", "type"),
    sa.Index(None, "created_at", "type"),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
)

job_events = sa.Table(
    "orchestrator_job_events",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column(
        "job_id",
        sa.String(36),
        sa.ForeignKey("orchestrator_jobs.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("at", Timestamp, nullable=False),
    sa.Column("event", sa.String(32), nullable=False),
    sa.Column("status", sa.String(16), nullable=True),
    sa.Column("attempt", sa.Integer(), nullable=False),
    sa.Column("actor", sa.String(128), nullable=False),
    sa.Column("detail", sa.Text(), nullable=True),
    sa.Index(None, "job_id", "id"),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
)

# Small named values the engine must remember across restarts (e.g. the Redis epoch it saw).
state = sa.Table(
    "orchestrator_state",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(255), nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
)

# The leadership: who leads, since when, and its epoch (a fencing number that grows with
# every new leadership). On SQLite `expires_at` is the lease itself; on MariaDB the lease is
# GET_LOCK held on a dedicated connection, and `expires_at` only says when it was renewed.
leader = sa.Table(
    "orchestrator_leader",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("leader_id", sa.String(128), nullable=True),
    sa.Column("epoch", sa.BigInteger(), nullable=False),
    sa.Column("since", Timestamp, nullable=True),
    sa.Column("expires_at", Timestamp, nullable=True),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
)

# -- GPUs, leases and the fleet (issue 4) ---------------------------------------------------

# One row per node that reports GPUs (workers and API replicas heartbeat their node).
nodes = sa.Table(
    "orchestrator_nodes",
    metadata,
    sa.Column("name", ExactString(128), primary_key=True),
    sa.Column("nvml_supported", sa.Boolean(), nullable=False),
    sa.Column("mps_enabled", sa.Boolean(), nullable=False),
    sa.Column("mps", sa.Text(), nullable=True),  # JSON: what was seen of MPS
    sa.Column("driver_version", sa.String(64), nullable=True),
    sa.Column("error", sa.Text(), nullable=True),  # why the probe failed, if it did
    sa.Column("reported_at", Timestamp, nullable=False),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
)

# The devices of each node, as last reported. Admission uses only fresh, healthy rows.
gpus = sa.Table(
    "orchestrator_gpus",
    metadata,
    sa.Column("node", ExactString(128), primary_key=True),
    sa.Column("idx", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("uuid", sa.String(96), nullable=True),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("memory_total_mb", sa.Integer(), nullable=False),
    sa.Column("memory_used_mb", sa.Integer(), nullable=False),
    sa.Column("utilization_gpu_pct", sa.Float(), nullable=True),
    sa.Column("temperature_c", sa.Float(), nullable=True),
    sa.Column("power_draw_w", sa.Float(), nullable=True),
    sa.Column("source", sa.String(16), nullable=False),  # nvml | simulated
    # ok | degraded (over the temperature limit, or its NVML reads failing)
    sa.Column("health", sa.String(16), nullable=False),
    sa.Column("error", sa.Text(), nullable=True),
    sa.Column("reported_at", Timestamp, nullable=False),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
)

# GPU leases: waiting requests, active leases, and what became of them.
leases = sa.Table(
    "orchestrator_leases",
    metadata,
    sa.Column("token", sa.String(32), primary_key=True),
    sa.Column("agent", ExactString(128), nullable=False),
    # The authenticated owner who answers for it (migration 0007).
    sa.Column("owner", ExactString(128), nullable=False, server_default="anonymous"),
    sa.Column("operation", sa.String(128), nullable=True),
    sa.Column("model_id", ExactString(255), nullable=True),
    # Asked for (NULL: any node) while waiting; the node granted once active.
    sa.Column("node", ExactString(128), nullable=True),
    sa.Column("devices", sa.String(255), nullable=True),  # JSON list of device indexes
    sa.Column("est_vram_mb", sa.Integer(), nullable=False),  # per device
    sa.Column("gpu_count", sa.Integer(), nullable=False),
    sa.Column("priority", sa.SmallInteger(), nullable=False),
    # waiting | active | released | expired | timed_out
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("job_id", sa.String(36), nullable=True),
    sa.Column("ttl_s", sa.Float(), nullable=False),
    # Its place in the queue (a job's lease keeps its job's submit time across retries).
    sa.Column("queued_at", Timestamp, nullable=False),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("wait_until", Timestamp, nullable=True),
    sa.Column("granted_at", Timestamp, nullable=True),
    sa.Column("expires_at", Timestamp, nullable=True),
    sa.Column("released_at", Timestamp, nullable=True),
    sa.Column("used_vram_mb", sa.Integer(), nullable=True),  # last reported by its holder
    sa.Column("peak_vram_mb", sa.Integer(), nullable=True),
    sa.Column("success", sa.Boolean(), nullable=True),
    sa.Column("reason", sa.Text(), nullable=True),
    # The holder's guess of its duration, for `shortest_first` (migration 0008).
    sa.Column("estimated_duration_s", sa.Float(), nullable=True),
    sa.Column("attempt", sa.Integer(), nullable=True),  # a job's lease: its attempt
    sa.Index(None, "status", "expires_at"),
    sa.Index(None, "status", "queued_at"),
    sa.Index(None, "job_id"),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
)

# GPU accounting: one row per lease that held devices, written in the transaction that
# ended it (released or expired), so each lease is counted exactly once (migration 0008).
usage = sa.Table(
    "orchestrator_usage",
    metadata,
    sa.Column("lease_token", sa.String(32), primary_key=True),
    sa.Column("owner", ExactString(128), nullable=False),
    sa.Column("agent", ExactString(128), nullable=False),
    sa.Column("type", sa.String(128), nullable=True),  # the lease's operation (a job's type)
    sa.Column("job_id", sa.String(36), nullable=True),
    sa.Column("attempt", sa.Integer(), nullable=True),
    sa.Column("node", ExactString(128), nullable=True),
    sa.Column("gpu_count", sa.Integer(), nullable=False),
    sa.Column("est_vram_mb", sa.Integer(), nullable=False),  # per device
    sa.Column("peak_vram_mb", sa.Integer(), nullable=True),  # per device, when reported
    sa.Column("started_at", Timestamp, nullable=False),
    sa.Column("ended_at", Timestamp, nullable=False),
    sa.Column("ended", sa.String(16), nullable=False),  # released | expired
    # DOUBLE: MariaDB's FLOAT is single precision, too coarse for sums that keep growing.
    sa.Column("gpu_seconds", sa.Double(), nullable=False),
    sa.Column("vram_mb_seconds_est", sa.Double(), nullable=False),
    sa.Column("vram_mb_seconds_peak", sa.Double(), nullable=True),
    sa.Index(None, "ended_at"),
    sa.Index(None, "owner", "ended_at"),
    sa.Index(None, "owner", "type"),  # the metrics' GROUP BY owner, type (migration 0010)
    sa.Index(None, "job_id"),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
)

# Named policies (the admission policy is one JSON document), changed through /policy.
policies = sa.Table(
    "orchestrator_policies",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("body", LongText, nullable=False),
    sa.Column("version", sa.Integer(), nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False),
    sa.Column("updated_by", sa.String(128), nullable=False),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
)

worker_pools = sa.Table(
    "worker_pools",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("node", ExactString(128), nullable=True),  # NULL: any node's supervisor
    sa.Column("job_types", sa.Text(), nullable=False),  # JSON list
    sa.Column("model_id", ExactString(255), nullable=True),
    sa.Column("concurrency", sa.Integer(), nullable=False),
    sa.Column("desired", sa.Integer(), nullable=False),
    sa.Column("running", sa.Integer(), nullable=False),
    sa.Column("min_warm", sa.Integer(), nullable=False),
    sa.Column("max_workers", sa.Integer(), nullable=False),
    sa.Column("idle_timeout_s", sa.Float(), nullable=False),
    # active | draining | stopped
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("last_busy_at", Timestamp, nullable=True),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
)

# Worker processes, registered at start and heartbeated while they live.
workers = sa.Table(
    "orchestrator_workers",
    metadata,
    sa.Column("id", sa.String(128), primary_key=True),
    sa.Column("node", ExactString(128), nullable=False),
    sa.Column("pool", sa.String(64), nullable=True),
    sa.Column("pid", sa.Integer(), nullable=True),
    sa.Column("job_types", sa.Text(), nullable=False),  # JSON list
    sa.Column("concurrency", sa.Integer(), nullable=False),
    # running | draining | stopped | lost (no heartbeat for a visibility timeout)
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("current_jobs", sa.Text(), nullable=True),  # JSON list of job ids
    sa.Column("started_at", Timestamp, nullable=False),
    sa.Column("heartbeat_at", Timestamp, nullable=False),
    sa.Column("stopped_at", Timestamp, nullable=True),
    sa.Index(None, "pool", "status"),
    sa.Index(None, "status", "heartbeat_at"),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
)

# Preload requests, one row per model: what `GET /models/status` summarises.
model_preloads = sa.Table(
    "orchestrator_model_preloads",
    metadata,
    # Byte for byte: "Llama-3" and "llama-3" are two folders, so two models.
    sa.Column("model_id", ExactString(255), primary_key=True),
    # queued | loading | done | failed
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("job_id", sa.String(36), nullable=True),
    sa.Column("node", ExactString(128), nullable=True),
    sa.Column("error", sa.Text(), nullable=True),
    sa.Column("requested_at", Timestamp, nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
)

# Which models are warm on which node.
warm_models = sa.Table(
    "orchestrator_warm_models",
    metadata,
    sa.Column("node", ExactString(128), primary_key=True),
    sa.Column("model_id", ExactString(255), primary_key=True),
    sa.Column("worker_id", sa.String(128), nullable=True),
    sa.Column("size_bytes", sa.BigInteger(), nullable=True),
    sa.Column("loaded_at", Timestamp, nullable=False),
    sa.Index(None, "model_id"),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
)

# API bearer tokens (docs/security.md): only a hash of each is stored (migration 0007).
api_tokens = sa.Table(
    "orchestrator_api_tokens",
    metadata,
    # Public id, also the token's first characters after its `orch_` prefix: what `tokens
    # list` shows and `tokens revoke` takes.
    sa.Column("id", sa.String(16), primary_key=True),
    sa.Column("token_hash", sa.String(64), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),  # submitter | worker | admin
    sa.Column("owner", ExactString(128), nullable=False),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("revoked_at", Timestamp, nullable=True),
    # Written at most once a minute per token (not on every request).
    sa.Column("last_used_at", Timestamp, nullable=True),
    sa.Index(None, "token_hash", unique=True),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
)

# GPU health (orchestrator/gpu_health.py): each fault seen on a device, and quarantines.
gpu_faults = sa.Table(
    "orchestrator_gpu_faults",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("node", ExactString(128), nullable=False),
    sa.Column("idx", sa.Integer(), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),  # nvml | xid | oom
    sa.Column("detail", sa.Text(), nullable=True),
    sa.Column("job_id", sa.String(36), nullable=True),
    sa.Column("at", Timestamp, nullable=False),
    sa.Index(None, "node", "idx", "at"),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
)

# One row per device ever quarantined; it is quarantined while `cleared_at` is NULL.
gpu_quarantines = sa.Table(
    "orchestrator_gpu_quarantines",
    metadata,
    sa.Column("node", ExactString(128), primary_key=True),
    sa.Column("idx", sa.Integer(), primary_key=True),
    sa.Column("reason", sa.Text(), nullable=False),
    sa.Column("since", Timestamp, nullable=False),
    sa.Column("cleared_at", Timestamp, nullable=True),
    sa.Column("cleared_by", sa.String(128), nullable=True),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
)

# Agents that registered (POST /agents/register), with the models they need.
agents = sa.Table(
    "orchestrator_agents",
    metadata,
    sa.Column("name", ExactString(128), primary_key=True),
    sa.Column("version", sa.String(64), nullable=False),
    sa.Column("capabilities", sa.Text(), nullable=False),  # JSON list
    sa.Column("requires_models", sa.Text(), nullable=False),  # JSON list
    sa.Column("owner", ExactString(128), nullable=False),
    sa.Column("registered_at", Timestamp, nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
)

# Evictions asked for (POST /models/evict) and not yet carried out by the holding worker.
model_evictions = sa.Table(
    "orchestrator_model_evictions",
    metadata,
    sa.Column("node", ExactString(128), primary_key=True),
    sa.Column("model_id", ExactString(255), primary_key=True),
    sa.Column("requested_at", Timestamp, nullable=False),
    sa.Column("requested_by", sa.String(128), nullable=False),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
)
