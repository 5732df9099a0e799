"""The client's errors: every one is an `OrchestratorError`."""

from __future__ import annotations

from typing import Any, Self

import httpx

from orchestrator.errors import OrchestratorError


class ApiError(OrchestratorError):
    """The API answered with an error status.

    `status` is the HTTP status, `code` the body's `error` (e.g. `job_not_found`), `message`
    its `message`, `details` its `details` (a dict, or a list for validation errors), and
    `body` the whole decoded body.
    """

    def __init__(self, status: int, code: str, message: str, body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.body: Any = body
        self.details = (body.get("details") or {}) if isinstance(body, dict) else {}

    @classmethod
    def from_response(cls, response: httpx.Response) -> Self:
        """The error an answer stands for (a body that is not JSON included)."""
        body = body_of(response)
        if body is NOT_JSON:
            body = None
        if isinstance(body, dict):
            code = str(body.get("error") or "http_error")
            message = str(body.get("message") or response.reason_phrase)
        else:
            code = "http_error"
            text = " ".join(response.text.split())[:200]
            message = f"not an orchestrator answer: {text or response.reason_phrase}"
        return cls(response.status_code, code, message, body)

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"


class LeaseDenied(ApiError):
    """A lease request was not granted (409): `reason` says why (e.g. `insufficient_vram`,
    `exceeds_capacity`, `quota_vram`, `wait_timeout`), `estimated_wait_ms` roughly when
    capacity might free (None: unknown)."""

    def __init__(self, status: int, code: str, message: str, body: Any = None) -> None:
        super().__init__(status, code, message, body)
        fields = body if isinstance(body, dict) else {}
        self.reason: str = str(fields.get("reason") or code)
        wait = fields.get("estimated_wait_ms")
        self.estimated_wait_ms: int | None = int(wait) if isinstance(wait, int | float) else None


class Unreachable(OrchestratorError):
    """The orchestrator could not be reached, or did not answer in time. `url` is where
    it was asked. The request may or may not have been carried out."""

    code = "unreachable"

    def __init__(self, message: str, url: str) -> None:
        super().__init__(message, url=url)
        self.url = url


class WaitTimeout(OrchestratorError):
    """`wait` ran out of time before the job finished; `job` is its last state seen."""

    code = "wait_timeout"

    def __init__(self, job_id: str, timeout: float, job: dict[str, Any] | None) -> None:
        status = job["status"] if job else "unknown"
        super().__init__(
            f"job {job_id} is still {status} after {timeout:g}s", job_id=job_id, status=status
        )
        self.job_id = job_id
        self.job = job


NOT_JSON: Any = object()


def body_of(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return NOT_JSON
