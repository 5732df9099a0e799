"""One exception tree; `orchestrator.api.errors` maps it to HTTP statuses."""

from __future__ import annotations

from typing import Any


class OrchestratorError(Exception):
    """The root of every error this package raises on purpose."""

    code = "orchestrator_error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class InvalidRequest(OrchestratorError):
    """The request is malformed; nothing was written."""

    code = "invalid_request"


class PayloadTooLarge(InvalidRequest):
    code = "payload_too_large"


class NotFound(OrchestratorError):
    code = "not_found"


class JobNotFound(NotFound):
    code = "job_not_found"


class Conflict(OrchestratorError):
    """The request contradicts the current state; nothing was written."""

    code = "conflict"


class IdempotencyConflict(Conflict):
    code = "idempotency_conflict"


class JobFinished(Conflict):
    code = "job_finished"


class PoolNotFound(NotFound):
    code = "pool_not_found"


class PoolExists(Conflict):
    code = "pool_exists"


class Unavailable(OrchestratorError):
    """A backing service (database, Redis) does not answer."""

    code = "unavailable"


class StoreUnavailable(Unavailable):
    code = "database_unavailable"


class StreamsUnavailable(Unavailable):
    code = "redis_unavailable"


class LeaseNotFound(NotFound):
    code = "lease_not_found"


class LeaseReleased(Conflict):
    code = "lease_released"


class LeaseExpired(OrchestratorError):
    """The lease expired (or its wait timed out) before this request: take a new one."""

    code = "lease_expired"


class Unauthenticated(OrchestratorError):
    """No bearer token, or one that is unknown or revoked (401)."""

    code = "unauthenticated"


class Forbidden(OrchestratorError):
    """The token's role may not call this endpoint (403)."""

    code = "forbidden"


class RateLimited(OrchestratorError):
    """The owner submits faster than its rate allows (429); `retry_after_s` says when to
    try again."""

    code = "rate_limited"


class HandlerNotFound(OrchestratorError):
    code = "handler_not_found"
