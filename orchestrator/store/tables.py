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
