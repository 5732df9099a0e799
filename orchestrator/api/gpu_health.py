"""Routes for GPU health: device quarantines, and clearing them (orchestrator/gpu_health.py)."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, Field

from orchestrator.api.jobs import ERRORS
from orchestrator.api.schemas import utc
from orchestrator.api.security import ANY_ROLE, Admin
from orchestrator.gpu_health import Quarantine
from orchestrator.wiring import Services

logger = logging.getLogger(__name__)

router = APIRouter(tags=["gpu"])

NodeName = Annotated[str, Path(min_length=1, max_length=128)]
DeviceIndex = Annotated[int, Path(ge=0, le=1023)]


class QuarantineView(BaseModel):
    node: str
    index: int
    reason: str
    since: datetime | None
    cleared_at: datetime | None
    cleared_by: str | None
    active: bool = Field(description="Still quarantined (not cleared).")

    @classmethod
    def of(cls, q: Quarantine) -> QuarantineView:
        return cls(
            node=q.node,
            index=q.index,
            reason=q.reason,
            since=utc(q.since),
            cleared_at=utc(q.cleared_at),
            cleared_by=q.cleared_by,
            active=q.active,
        )


class QuarantinesView(BaseModel):
    quarantines: list[QuarantineView]


class ClearView(BaseModel):
    node: str
    index: int
    cleared: bool = Field(description="False: the device was not quarantined.")
    quarantine: QuarantineView | None = Field(description="The quarantine that was lifted.")


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


@router.get(
    "/gpu/quarantines",
    response_model=QuarantinesView,
    responses=ERRORS,
    dependencies=[Depends(ANY_ROLE)],
)
def list_quarantines(
    request: Request,
    include_cleared: Annotated[bool, Query(description="Also those already cleared.")] = False,
) -> QuarantinesView:
    """Quarantined devices: why and since when (with `include_cleared`, past ones too)."""
    found = _services(request).store.list_quarantines(include_cleared=include_cleared)
    return QuarantinesView(quarantines=[QuarantineView.of(q) for q in found])


@router.post("/gpu/{node}/{index}/clear", response_model=ClearView, responses=ERRORS)
def clear_quarantine(node: NodeName, index: DeviceIndex, request: Request, who: Admin) -> ClearView:
    """Lift a device's quarantine: it takes leases again, and its faults so far stop
    counting. Clearing a device that is not quarantined changes nothing (`cleared: false`);
    a device never reported is a 404."""
    services = _services(request)
    lifted = services.store.clear_quarantine(node, index, services.clock.now(), who.owner)
    if lifted is not None:
        logger.warning(
            "GPU %s/%d cleared by %s (was: %s)",
            node,
            index,
            who.owner,
            lifted.reason,
            extra={"event": "gpu_quarantine_cleared"},
        )
    return ClearView(
        node=node,
        index=index,
        cleared=lifted is not None,
        quarantine=QuarantineView.of(lifted) if lifted else None,
    )
