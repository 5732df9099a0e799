"""The no-op handler every system runs in the benchmark."""

from __future__ import annotations

from workers.context import JobContext
from workers.registry import handler


@handler("noop")
def noop(ctx: JobContext) -> None:
    """Does nothing: the benchmark measures the system, not the work."""
    return None
