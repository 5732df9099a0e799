"""The one place that maps errors to HTTP statuses and JSON bodies."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator.errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    LeaseExpired,
    NotFound,
    OrchestratorError,
    PayloadTooLarge,
    RateLimited,
    Unauthenticated,
    Unavailable,
)

logger = logging.getLogger(__name__)

# FastAPI's HTTPException detail for a request body it could not decode.
BODY_NOT_PARSED = "There was an error parsing the body"

STATUS_BY_ERROR: list[tuple[type[OrchestratorError], int]] = [
    (Unauthenticated, 401),
    (Forbidden, 403),
    (RateLimited, 429),
    (PayloadTooLarge, 413),
    (InvalidRequest, 422),
    (NotFound, 404),
    (Conflict, 409),
    (LeaseExpired, 408),
    (Unavailable, 503),
]


def error_response(
    status: int,
    code: str,
    message: str,
    details: Any = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {"error": code, "message": message}
    if details:
        body["details"] = details
    return JSONResponse(body, status_code=status, headers=headers)


def _headers_of(exc: OrchestratorError) -> dict[str, str] | None:
    """Headers the status needs (RFC 6750 for 401, RFC 9110 Retry-After for 429)."""
    if isinstance(exc, Unauthenticated):
        return {"WWW-Authenticate": 'Bearer realm="orchestrator"'}
    if isinstance(exc, RateLimited):
        return {"Retry-After": str(exc.details.get("retry_after_s", 1))}
    return None


def _status_of(exc: OrchestratorError) -> int:
    for cls, status in STATUS_BY_ERROR:
        if isinstance(exc, cls):
            return status
    return 500


async def _orchestrator_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, OrchestratorError)
    status = _status_of(exc)
    if status >= 500:
        logger.error("request failed: %s", exc.message, extra={"event": "request_failed"})
    return error_response(status, exc.code, exc.message, exc.details or None, _headers_of(exc))


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # Echo where and why, never the input itself (it may be a megabyte of payload).
    details = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
        for e in exc.errors()
    ]
    first = details[0] if details else {"loc": [], "msg": "invalid request", "type": ""}
    if first["type"] == "json_invalid":
        return error_response(422, "invalid_request", "the request body is not valid JSON", details)
    where = ".".join(str(p) for p in first["loc"][1:]) or "body"
    return error_response(422, "invalid_request", f"{where}: {first['msg']}", details)


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400 and exc.detail == BODY_NOT_PARSED:
        # FastAPI's answer to a body that is not even text (bytes that are not UTF-8): the
        # same error as malformed JSON, so clients handle one case.
        return error_response(422, "invalid_request", "the request body is not valid JSON")
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, str(exc.detail))


async def _unexpected_error(_request: Request, exc: Exception) -> JSONResponse:
    logger.error("unexpected error: %r", exc, exc_info=exc, extra={"event": "request_crashed"})
    return error_response(500, "internal_error", "unexpected server error (see the server log)")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(Exception, _unexpected_error)
    app.add_exception_handler(OrchestratorError, _orchestrator_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)


class BodyLimit:
    """Refuses request bodies over a size with 413, without holding more than that in memory.

    A declared Content-Length is checked up front; a chunked body is read up to the limit
    first, then replayed to the app.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            if declared.isdigit() and int(declared) > self.max_bytes:
                await self._reject(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._reject(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(
            413, PayloadTooLarge.code, f"request body is over {self.max_bytes} bytes"
        )
        await response(scope, receive, send)
