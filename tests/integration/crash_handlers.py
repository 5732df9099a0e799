"""Handlers for the crash tests, run by real worker processes
(`orchestrator worker --import tests.integration.crash_handlers`).

Every run is appended to the file named by `payload["log"]`, one line per step:
`start JOB ATTEMPT PID` when the handler begins and `done JOB ATTEMPT PID` when it returns,
so the tests count how often a job ran instead of assuming it. Each line is a single
`write` to a file opened with O_APPEND, so lines from several processes never interleave,
and a line is in the file before the process can die.
"""

from __future__ import annotations

import os
import time
from typing import Any

from workers import JobContext, handler


def append_line(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def _sleep(seconds: float) -> None:
    """Sleep on the monotonic clock in short steps: a process stopped (SIGSTOP) past the
    deadline returns as soon as it is continued."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, 0.05))


@handler("crash_record")
def record(ctx: JobContext) -> dict[str, Any]:
    """Logs its start, sleeps (`first_seconds` on attempt 1, else `seconds`), logs that it is
    done and returns who ran it. The heartbeats come from the worker's monitor thread."""
    payload = ctx.payload
    append_line(payload["log"], f"start {ctx.id} {ctx.attempt} {os.getpid()}")
    key = "first_seconds" if ctx.attempt == 1 and "first_seconds" in payload else "seconds"
    _sleep(float(payload.get(key, 0.0)))
    append_line(payload["log"], f"done {ctx.id} {ctx.attempt} {os.getpid()}")
    return {"attempt": ctx.attempt, "pid": os.getpid()}


@handler("crash_poison")
def poison(ctx: JobContext) -> None:
    """Logs its start, then kills its whole worker process: the job can never finish."""
    append_line(ctx.payload["log"], f"start {ctx.id} {ctx.attempt} {os.getpid()}")
    os._exit(1)
