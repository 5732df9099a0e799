"""Routes for probes and scrapers: /health, /ready, /metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from orchestrator.api.errors import error_response
from orchestrator.api.security import METRICS, PUBLIC
from orchestrator.errors import OrchestratorError
from orchestrator.wiring import Services

router = APIRouter(tags=["health"])


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


@router.get("/health", dependencies=[Depends(PUBLIC)])
def health() -> dict[str, str]:
    """The process is alive (no dependency is checked)."""
    return {"status": "ok"}


@router.get(
    "/ready",
    responses={503: {"description": "not ready, with the reasons"}},
    dependencies=[Depends(PUBLIC)],
)
def ready(request: Request) -> Any:
    """Ready to serve: the database answers with its schema at head, Redis answers, and
    some replica leads (so delayed jobs, retries and recovery go on)."""
    services = _services(request)
    checks: dict[str, str] = {}
    try:
        services.store.check_schema()
        checks["database"] = "ok"
    except OrchestratorError as exc:
        checks["database"] = exc.message
    try:
        services.streams.ping()
        checks["redis"] = "ok"
    except OrchestratorError as exc:
        checks["redis"] = exc.message
    try:
        leads = services.engine.election.someone_leads(services.clock.now())
        checks["leader"] = "ok" if leads else "no replica leads"
    except OrchestratorError as exc:
        checks["leader"] = exc.message
    problems = {name: why for name, why in checks.items() if why != "ok"}
    if problems:
        reasons = "; ".join(f"{name}: {why}" for name, why in problems.items())
        return error_response(503, "not_ready", reasons, checks)
    return {"status": "ready", "checks": checks}


@router.get("/metrics", response_class=Response, dependencies=[Depends(METRICS)])
def metrics(request: Request) -> Response:
    """Prometheus metrics (see docs/metrics.md)."""
    return Response(_services(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)
