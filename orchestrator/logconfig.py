"""Log set-up: readable lines by default, JSON lines with ORCH_LOG_JSON=true.

Code logs with `extra={"event": ..., "job_id": ..., "attempt": ...}`. Both renderings keep
that context: a JSON line has every field passed in `extra`, and a text line about a job
ends with `[job ID attempt N]` for whatever of the two its message does not already say.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

# Fields that code passes in `extra=` most often: first, in this order, in a JSON line.
CONTEXT_FIELDS = ("event", "job_id", "attempt", "worker", "count")

# What a LogRecord has of itself; anything else on it came from `extra=`. uvicorn adds
# `color_message`, the message again with terminal colours: not context.
_RECORD_FIELDS = frozenset(logging.makeLogRecord({}).__dict__) | {
    "message",
    "asctime",
    "color_message",
}


def context_of(record: logging.LogRecord) -> dict[str, Any]:
    """The `extra=` fields of a record: the common ones first, then the rest by name."""
    extra = {k: v for k, v in record.__dict__.items() if k not in _RECORD_FIELDS}
    ordered = {name: extra.pop(name) for name in CONTEXT_FIELDS if name in extra}
    return ordered | dict(sorted(extra.items()))


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ts, level, logger, msg, every context field, exc."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name, value in context_of(record).items():
            line.setdefault(name, value)  # a field named like ours does not overwrite it
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message`, then the job's id and attempt unless the message
    already says them; an unknown attempt is left out rather than shown as a guess."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        suffix = job_suffix(record)
        if not suffix:
            return text
        # After the message's first line, before any traceback that follows it.
        head, sep, rest = text.partition("\n")
        return f"{head} {suffix}{sep}{rest}"


def job_suffix(record: logging.LogRecord) -> str:
    """`[job ID attempt N]`, `[job ID]` or `[attempt N]`: what the message lacks of the
    record's job id and attempt; empty when it is about no job or says both."""
    job_id = getattr(record, "job_id", None)
    if not job_id:
        return ""
    message = record.getMessage()
    attempt = getattr(record, "attempt", None)
    parts = []
    if str(job_id) not in message:
        parts.append(f"job {job_id}")
    if attempt is not None and not re.search(rf"\battempt {attempt}\b", message):
        parts.append(f"attempt {attempt}")
    return f"[{' '.join(parts)}]" if parts else ""


def configure_logging(level: str = "INFO", json_lines: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Request lines are uvicorn's access log; httpx's own would repeat them at info.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
