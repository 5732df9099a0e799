"""Every setting of the service, read from `ORCH_*` environment variables."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from orchestrator.input_limits import MAX_BATCH_SIZE, MAX_DELAY_S, compile_job_type_pattern

EMBEDDED = "embedded"


class Settings(BaseSettings):
    """Settings, each overridable with an environment variable `ORCH_<NAME>`.

    The defaults run with no servers: a SQLite file and an embedded Redis under `data_dir`.
    """

    model_config = SettingsConfigDict(env_prefix="ORCH_", extra="ignore")

    # Where things live.
    data_dir: Path = Field(
        Path("var"), description="Folder for the SQLite file and embedded Redis."
    )
    database_url: str = Field(
        "",
        description="SQLAlchemy URL, e.g. mysql+pymysql://user:pw@host/db. "
        "Empty: a SQLite file in data_dir.",
    )
    redis_url: str = Field(
        EMBEDDED,
        description="redis:// or unix:// URL, or 'embedded' for the Redis that "
        "`orchestrator up` starts in data_dir.",
    )
    redis_prefix: str = Field("", description="Prefix for every Redis key (to share a Redis).")

    # The API.
    host: str = Field("127.0.0.1", description="Address the API binds to.")
    port: int = Field(8014, ge=1, le=65535, description="Port the API binds to.")
    api_url: str = Field(
        "", description="Where the CLI and the client find the API. Empty: ORCH_HOST:ORCH_PORT."
    )
    api_token: str = Field(
        "",
        description="Bearer token the CLI and the client send. Empty: none.",
    )

    # Authentication, roles and the submit rate limit (docs/security.md).
    api_token_hashes: str = Field(
        "",
        description="Tokens configured by environment, comma-separated "
        "'sha256hex:role:owner' entries (`orchestrator tokens hash` prints one). They add "
        "to the tokens of the database; any token at all turns authentication on.",
    )
    auth_cache_ttl_s: float = Field(
        5.0,
        ge=0,
        le=300,
        description="How long a replica trusts a token it looked up: a revoked token stops "
        "working within this time. 0: look every request up.",
    )
    metrics_require_token: bool = Field(
        False, description="/metrics answers only with a token (any role) when auth is on."
    )
    allow_open_api: bool = Field(
        False,
        description="DANGEROUS: serve on a non-loopback address with no tokens, so anyone "
        "who reaches it acts as an admin.",
    )
    submit_rate_per_s: float = Field(
        5000.0,
        ge=0,
        description="Jobs per second each owner may submit, per replica (a batch of n "
        "counts n). 0: no limit.",
    )
    submit_burst: int = Field(
        20000,
        ge=0,
        description="Jobs an owner may submit at once above its rate (bucket size); at least "
        "max_batch_size while the rate is on.",
    )
    allowed_hosts: str = Field(
        "localhost,127.0.0.1,::1",
        description="While the API runs open (no tokens): the Host header values it answers "
        "(comma-separated; any port; IPv6 with or without brackets). Others get 403, against "
        "DNS rebinding.",
    )

    # Jobs.
    # Input limits (docs/api.md#limits); the request schemas hold the absolute bounds, these
    # can only narrow them. Payloads and results are bounded at 4 MiB: their MariaDB columns
    # are MEDIUMTEXT (16 MiB), and one statement must fit `max_allowed_packet` (16 MiB by
    # default) though escaping can double the bytes on the wire.
    max_payload_bytes: int = Field(
        1 << 20, ge=1, le=4 << 20, description="Largest job payload (JSON bytes)."
    )
    max_request_bytes: int = Field(
        16 << 20, ge=1, le=1 << 30, description="Largest HTTP request body (a whole batch)."
    )
    max_result_bytes: int = Field(
        1 << 20, ge=1, le=4 << 20, description="Largest job result (JSON bytes)."
    )
    max_batch_size: int = Field(
        1000, ge=1, le=MAX_BATCH_SIZE, description="Most jobs in one submit_batch request."
    )
    max_page_size: int = Field(
        500, ge=1, le=10_000, description="Most items in one page of any list (jobs, leases...)."
    )
    job_type_pattern: str = Field(
        r"^[a-z][a-z0-9_]{0,63}$",
        description="Regular expression a submitted job type (or a pool's) must match in "
        "full. Types must also satisfy the stream key rules ^[a-z][a-z0-9_]{0,63}$, so this "
        "can only narrow them. Built-in types (preloads) are always allowed.",
    )
    max_idempotency_key_length: int = Field(
        255, ge=1, le=255, description="Longest idempotency_key, in characters."
    )
    max_name_length: int = Field(
        128, ge=1, le=128, description="Longest lease agent, operation or node name."
    )
    max_delay_s: float = Field(
        MAX_DELAY_S,
        gt=0,
        le=MAX_DELAY_S,
        description="Longest a job may be scheduled ahead (run_at or delay_s), in seconds. "
        "Default and most: 3660 days.",
    )
    max_preload_models: int = Field(
        100, ge=1, le=100, description="Most models in one POST /models/preload."
    )
    default_max_attempts: int = Field(
        3, ge=1, le=100, description="Attempts when a submit names none."
    )
    default_timeout_s: float = Field(600.0, gt=0, description="Handler time limit by default.")
    max_timeout_s: float = Field(7 * 86400.0, gt=0, description="Largest timeout_s accepted.")
    retry_backoff_base_s: float = Field(
        1.0, ge=0, description="Longest first retry delay; each retry doubles it, with jitter."
    )
    retry_backoff_max_s: float = Field(300.0, ge=0, description="Cap on the retry delay.")

    # The engine.
    scheduler_interval_s: float = Field(
        0.25, gt=0, description="How often due delayed and retried jobs are published."
    )

    visibility_timeout_s: float = Field(
        30.0, gt=0, description="A running job with no heartbeat for this long lost its worker."
    )
    reclaim_interval_s: float = Field(
        5.0, gt=0, description="How often the leader reclaims stale work and lost messages."
    )
    relay_grace_s: float = Field(
        10.0, ge=0, description="Age after which a waiting job's message must be in Redis."
    )
    relay_interval_s: float = Field(
        30.0, gt=0, description="How often the leader checks that waiting jobs' messages exist."
    )
    relay_batch: int = Field(
        10000, ge=1, description="Most waiting jobs the relay checks in one pass."
    )
    consumer_idle_s: float = Field(
        3600.0, gt=0, description="Idle stream consumers with nothing pending are removed."
    )
    leader_lease_s: float = Field(
        3.0, gt=0, description="SQLite: how long a leader's lease lasts unless renewed."
    )
    leader_lock: str = Field(
        "gpu_orchestrator_leader",
        max_length=64,
        description="MariaDB: the GET_LOCK name. Lock names are server-wide: deployments "
        "sharing one MariaDB server need different names.",
    )
    instance_id: str = Field(
        "", description="This replica's name in leader election. Empty: host-pid-random."
    )

    # Workers.
    worker_concurrency: int = Field(4, ge=1, description="Handler threads per worker process.")
    heartbeat_interval_s: float = Field(
        2.0, gt=0, description="How often a worker heartbeats its running jobs."
    )
    read_block_ms: int = Field(1000, ge=1, description="How long a worker blocks on a read.")
    claim_linger_ms: float = Field(
        10.0,
        ge=0,
        le=1000,
        description=(
            "With half or more of a worker's slots busy, how long it may wait for more to come"
            " free before claiming, so one transaction claims for several (0: never wait)."
        ),
    )
    shutdown_grace_s: float = Field(
        30.0, ge=0, description="How long a stopping worker lets running handlers finish."
    )
    cancel_grace_s: float = Field(
        10.0, ge=0, description="How long a cancelled handler may run before it is stopped."
    )
    up_workers: int = Field(2, ge=0, description="Worker processes that `orchestrator up` starts.")
    worker_metrics_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="First port a worker serves its own /metrics on (several workers on one "
        "host take the next free ones). 0: off.",
    )
    worker_metrics_host: str = Field(
        "127.0.0.1", description="Address a worker's /metrics binds to."
    )
    worker_metrics_port_span: int = Field(
        32,
        ge=1,
        le=1024,
        description="How many ports from ORCH_WORKER_METRICS_PORT a worker tries: at least "
        "the most workers one host runs.",
    )

    # GPUs and leases.
    node_name: str = Field(
        "", max_length=128, description="This host's name in the GPU inventory. Empty: hostname."
    )
    gpu_backend: Literal["auto", "nvml", "simulated", "none"] = Field(
        "auto",
        description="Where GPUs come from. auto: NVML when it works, else the simulated "
        "devices of ORCH_GPU_SIMULATE, else none (CPU only).",
    )
    gpu_simulate: str = Field(
        "",
        description="Simulated devices (MB each) when NVML or a GPU is absent: "
        "'2x24576' or '24576,16384'.",
    )
    gpu_report_interval_s: float = Field(
        5.0, gt=0, description="How often a node reports its GPUs to the database."
    )
    gpu_stale_s: float = Field(
        30.0, gt=0, description="Devices not reported for this long get no new leases."
    )
    gpu_headroom_mb: int = Field(512, ge=0, description="VRAM never leased on any device.")
    gpu_temp_limit_c: float = Field(
        90.0, gt=0, description="A device hotter than this is degraded: no new leases."
    )
    mps_pipe_dir: Path = Field(
        Path("/tmp/nvidia-mps"),
        description="CUDA MPS pipe directory: MPS counts as on when it exists.",
    )
    lease_default_ttl_s: float = Field(60.0, gt=0, description="A lease's ttl_s by default.")
    lease_max_ttl_s: float = Field(3600.0, gt=0, description="Largest lease ttl_s accepted.")
    lease_max_wait_s: float = Field(
        600.0, ge=0, description="Longest wait_s a lease request may queue for."
    )
    lease_sweep_interval_s: float = Field(
        1.0, gt=0, description="How often the leader expires leases and grants waiting ones."
    )
    safe_mode: bool = Field(False, description="Grant no leases (503) and refuse policy changes.")
    job_lease_wait_s: float = Field(
        10.0,
        ge=0,
        description="How long a worker waits for a GPU job's lease before giving the job "
        "back (it keeps its place in the lease queue).",
    )
    job_lease_retry_s: float = Field(
        1.0, ge=0, description="Delay before a job given back for want of a lease is offered again."
    )

    # GPU health: OOM retries and device quarantine (docs/gpus.md).
    gpu_oom_growth: float = Field(
        1.5,
        ge=1,
        le=10,
        description="A job whose handler ran out of GPU memory is retried with its "
        "est_vram_mb times this (1: the same estimate).",
    )
    gpu_oom_max_vram_mb: int = Field(
        0,
        ge=0,
        description="Most an OOM retry raises est_vram_mb to (0: the largest device, "
        "less headroom).",
    )
    gpu_quarantine_faults: int = Field(
        3,
        ge=0,
        description="NVML errors or Xid-style faults on one device within "
        "gpu_quarantine_window_s that quarantine it (0: never).",
    )
    gpu_quarantine_ooms: int = Field(
        3,
        ge=0,
        description="Out-of-memory failures below the device's capacity within "
        "gpu_quarantine_window_s that quarantine it (0: never).",
    )
    gpu_quarantine_window_s: float = Field(
        600.0, gt=0, description="The window in which a device's faults are counted."
    )

    # Models.
    model_store: Path | None = Field(
        None,
        description="Root of the model files the preload handler warms. Empty: data_dir/models.",
    )
    model_loader: str = Field(
        "",
        description="'module:function' that loads a model's folder; empty: read its files.",
    )
    model_affinity_s: float = Field(
        5.0,
        ge=0,
        description="How long a job for model M waits for a worker where M is warm before "
        "any worker may take it.",
    )

    # Worker pools.
    pool_max_total_workers: int = Field(
        64, ge=0, description="Most worker processes all pools may want at once."
    )
    pool_reconcile_interval_s: float = Field(
        2.0, gt=0, description="How often a node supervisor matches its pools' desired sizes."
    )

    # Storage tuning.
    sqlite_busy_timeout_ms: int = Field(
        15000, ge=0, description="How long SQLite waits on a locked database."
    )

    # Logs.
    log_level: str = Field("INFO", description="Log level.")
    log_json: bool = Field(False, description="Log JSON lines instead of readable text.")

    @model_validator(mode="after")
    def _limits_consistent(self) -> Settings:
        """A nonsense limit is a startup error, not a surprise on the first request."""
        compile_job_type_pattern(self.job_type_pattern)
        pairs = [
            ("max_payload_bytes", "max_request_bytes"),
            ("default_timeout_s", "max_timeout_s"),
            ("lease_default_ttl_s", "lease_max_ttl_s"),
            ("retry_backoff_base_s", "retry_backoff_max_s"),
        ]
        for low, high in pairs:
            if getattr(self, low) > getattr(self, high):
                raise ValueError(f"{low} must not be more than {high}")
        if self.submit_rate_per_s > 0 and self.submit_burst < self.max_batch_size:
            raise ValueError(
                f"submit_burst ({self.submit_burst}) must be at least max_batch_size "
                f"({self.max_batch_size}) while the submit rate limit is on: a batch costs "
                "its full size, so a larger one could never pass"
            )
        return self

    @field_validator("api_token_hashes")
    @classmethod
    def _token_hashes(cls, value: str) -> str:
        from orchestrator.auth import parse_token_hashes  # auth needs Settings: import late

        parse_token_hashes(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.heartbeat_interval_s * 2 > self.visibility_timeout_s:
            raise ValueError(
                "visibility_timeout_s must be at least twice heartbeat_interval_s, or live "
                "jobs would be reclaimed between two heartbeats"
            )
        if self.scheduler_interval_s >= self.leader_lease_s:
            raise ValueError(
                "leader_lease_s must be longer than scheduler_interval_s, which "
                "is how often the leader renews it"
            )
        return self

    def resolved_api_url(self) -> str:
        if self.api_url:
            return self.api_url
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}"

    def resolved_database_url(self) -> str:
        """The database URL, with the embedded SQLite default filled in."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'orchestrator.db').resolve()}"

    def resolved_node_name(self) -> str:
        return self.node_name or socket.gethostname()

    def resolved_model_store(self) -> Path:
        return (self.model_store or self.data_dir / "models").resolve()

    def embedded_redis_socket(self) -> Path:
        """Where the embedded Redis listens (a unix socket in data_dir)."""
        return (self.data_dir / "redis.sock").resolve()

    def resolved_redis_url(self) -> str:
        """The Redis URL, with the embedded socket filled in."""
        if self.redis_url == EMBEDDED:
            return f"unix://{self.embedded_redis_socket()}"
        return self.redis_url
