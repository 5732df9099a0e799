"""The FastAPI application."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from orchestrator import __version__
from orchestrator.api import (
    agents,
    control,
    dashboard,
    gpu,
    gpu_health,
    health,
    insight,
    jobs,
    models,
    pools,
    queues,
    usage,
)
from orchestrator.api.errors import BodyLimit, install_error_handlers
from orchestrator.api.lease_waits import LeaseWaits
from orchestrator.api.loopback import LoopbackGuard
from orchestrator.wiring import Services


def create_app(services: Services, *, run_engine: bool = True) -> FastAPI:
    """The API over `services`; with `run_engine`, the engine runs while the app does."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if run_engine:
            services.engine.start()
        try:
            yield
        finally:
            if run_engine:
                services.engine.stop()

    app = FastAPI(title="GPU orchestrator", version=__version__, lifespan=lifespan)
    app.state.services = services
    app.state.lease_waits = LeaseWaits(services.leases)
    install_error_handlers(app)
    app.include_router(jobs.router)
    app.include_router(insight.router)
    app.include_router(control.router)
    app.include_router(health.router)
    app.include_router(gpu.router)
    app.include_router(gpu_health.router)
    app.include_router(agents.router)
    app.include_router(pools.router)
    app.include_router(models.router)
    app.include_router(queues.router)
    app.include_router(usage.router)
    app.include_router(dashboard.router)

    app.add_middleware(BodyLimit, max_bytes=services.settings.max_request_bytes)
    # Outermost: while the API runs open, a request from another site or host is refused
    # before anything else reads it.
    app.add_middleware(
        LoopbackGuard, auth=services.auth, allowed_hosts=services.settings.allowed_hosts
    )
    return app
