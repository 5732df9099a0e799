"""Every Redis key and group name, in one place."""

from __future__ import annotations

from orchestrator.jobs import Priority

STREAM_ROOT = "stream:orchestrator:"
DLQ_SUFFIX = ":dlq"


class Keys:
    """Key names under an optional prefix (to share one Redis between deployments or tests).

    A job type T is delivered on `stream:orchestrator:T` (the normal band) and on
    `stream:orchestrator:T:critical|high|low` for the other bands; dead letters go to
    `stream:orchestrator:T:dlq`. Job types cannot contain ':', so these never collide.
    """

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix

    def stream(self, job_type: str, priority: Priority = Priority.NORMAL) -> str:
        base = f"{self.prefix}{STREAM_ROOT}{job_type}"
        return base if priority is Priority.NORMAL else f"{base}:{priority.label}"

    def streams(self, job_type: str) -> list[tuple[str, Priority]]:
        """The streams of one job type, most urgent band first."""
        return [(self.stream(job_type, p), p) for p in Priority]

    def parse_stream(self, key: str) -> tuple[str, Priority] | None:
        """(job type, band) of a job stream's key; None for any other key (a DLQ, say)."""
        root = f"{self.prefix}{STREAM_ROOT}"
        if not key.startswith(root):
            return None
        job_type, _, band = key[len(root) :].partition(":")
        if not band:
            return job_type, Priority.NORMAL
        if band in ("critical", "high", "low"):
            return job_type, Priority.from_label(band)
        return None

    def dlq(self, job_type: str) -> str:
        return f"{self.prefix}{STREAM_ROOT}{job_type}{DLQ_SUFFIX}"

    @staticmethod
    def group(job_type: str) -> str:
        """Consumer groups live inside their stream, so they need no prefix."""
        return f"cg:{job_type}"

    def redis_epoch(self) -> str:
        """Set once in a Redis's life: its absence means Redis lost its data."""
        return f"{self.prefix}orchestrator:redis_epoch"
