"""A durable job-processing orchestrator for GPU workloads, over MariaDB and Redis Streams."""

from __future__ import annotations

__version__ = "0.1.0"
