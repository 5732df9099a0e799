"""Built-in handlers, for trying the orchestrator out."""

from __future__ import annotations

from typing import Any

from workers.context import JobCancelled, JobContext
from workers.registry import handler


@handler("echo")
def echo(ctx: JobContext) -> Any:
    """Returns its payload."""
    return ctx.payload


@handler("sleep")
def sleep(ctx: JobContext) -> dict[str, float]:
    """Sleeps `payload.seconds` (default 1), reporting progress; stops when cancelled."""
    seconds = float((ctx.payload or {}).get("seconds", 1.0))
    step = min(1.0, seconds) or 1.0
    slept = 0.0
    while slept < seconds:
        if ctx.wait(min(step, seconds - slept)):
            raise JobCancelled()
        slept = min(seconds, slept + step)
        ctx.progress({"slept_s": round(slept, 3), "total_s": seconds})
    return {"slept_s": seconds}


@handler("fail")
def fail(ctx: JobContext) -> None:
    """Always fails with `payload.message`: shows retries, backoff and the DLQ."""
    raise RuntimeError((ctx.payload or {}).get("message", "failed on purpose"))
