"""Conversions between rows and the job's dataclasses."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from orchestrator.jobs import GpuNeeds, Job, JobEvent, JobStatus, Priority

# One encoder for every call: json.dumps with options builds a new JSONEncoder each time,
# which was a sixth of the API's time on a batch submit (docs/benchmarks.md).
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def dumps(value: Any) -> str:
    return _ENCODER.encode(value)


def loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def job_from_row(row: Mapping[Any, Any]) -> Job:
    return Job(
        id=row["id"],
        type=row["type"],
        status=JobStatus(row["status"]),
        priority=Priority(row["priority"]),
        payload=loads(row["payload"]),
        attempts=row["attempts"],
        max_attempts=row["max_attempts"],
        timeout_s=row["timeout_s"],
        owner=row["owner"],
        idempotency_key=row["idempotency_key"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        available_at=row["available_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        heartbeat_at=row["heartbeat_at"],
        worker_id=row["worker_id"],
        result=loads(row["result"]),
        error=row["error"],
        progress=loads(row["progress"]),
        cancel_requested=bool(row["cancel_requested"]),
        gpu=GpuNeeds.from_dict(loads(row["gpu"])) if row["gpu"] else None,
    )


def event_from_row(row: Mapping[Any, Any]) -> JobEvent:
    return JobEvent(
        id=row["id"],
        job_id=row["job_id"],
        at=row["at"],
        event=row["event"],
        status=row["status"],
        attempt=row["attempt"],
        actor=row["actor"],
        detail=loads(row["detail"]) or {},
    )
