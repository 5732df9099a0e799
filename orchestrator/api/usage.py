"""`GET /usage`: GPU-seconds and VRAM-seconds that finished leases used, summed per owner,
agent, job type or node (see docs/scheduling.md for how they are computed).

A caller that is not an admin sees only its own owner's usage.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from orchestrator.api.jobs import ERRORS
from orchestrator.api.schemas import utc
from orchestrator.api.security import AnyRole
from orchestrator.errors import Forbidden, InvalidRequest
from orchestrator.store.usage_base import UsageGroup, UsageQuery, UsageTotal
from orchestrator.wiring import Services

router = APIRouter(tags=["usage"])

Name = Annotated[str, Query(min_length=1, max_length=128)]


class UsageView(BaseModel):
    key: str | None = Field(description="The owner, agent, job type or node (null: none).")
    leases: int = Field(description="Leases that held devices and ended in the period.")
    gpu_seconds: float = Field(description="Seconds held x devices.")
    vram_mb_seconds_est: float = Field(description="est_vram_mb x seconds held x devices.")
    vram_mb_seconds_peak: float = Field(
        description="peak_vram_mb x seconds held x devices, over the leases that reported a peak."
    )
    measured_leases: int = Field(description="How many leases reported a peak.")

    @classmethod
    def of(cls, total: UsageTotal) -> UsageView:
        return cls(
            key=total.key,
            leases=total.leases,
            gpu_seconds=round(total.gpu_seconds, 3),
            vram_mb_seconds_est=round(total.vram_mb_seconds_est, 3),
            vram_mb_seconds_peak=round(total.vram_mb_seconds_peak, 3),
            measured_leases=total.measured_leases,
        )


class UsageReport(BaseModel):
    group_by: UsageGroup
    owner: str | None = Field(description="The owner filter in force (a submitter: its own).")
    agent: str | None
    type: str | None
    since: datetime | None
    until: datetime | None
    groups: list[UsageView] = Field(description="Largest GPU-seconds first.")
    total: UsageView = Field(description="All the groups together (key null).")


def _naive(value: datetime | None) -> datetime | None:
    """Stored times are naive UTC; a time without an offset is taken as UTC."""
    if value is None or value.tzinfo is None:
        return value
    try:
        return value.astimezone(UTC).replace(tzinfo=None)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00: before the first representable
        raise InvalidRequest(f"{value.isoformat()} is out of the representable range") from None


@router.get("/usage", response_model=UsageReport, responses=ERRORS)
def get_usage(
    request: Request,
    who: AnyRole,
    owner: Name | None = None,
    agent: Name | None = None,
    type: Name | None = None,
    since: Annotated[
        datetime | None, Query(description="ISO-8601; leases that ended at or after.")
    ] = None,
    until: Annotated[
        datetime | None, Query(description="ISO-8601; leases that ended before.")
    ] = None,
    group_by: UsageGroup = UsageGroup.OWNER,
) -> UsageReport:
    """GPU usage of the leases that ended in [since, until), summed per group."""
    services: Services = request.app.state.services
    mine = who.sees_owner
    if mine is not None and owner not in (None, mine):
        raise Forbidden(f"a {who.role.value} token sees only its own owner's usage ({mine})")
    owner = mine or owner
    start, end = _naive(since), _naive(until)
    if start is not None and end is not None and end <= start:
        raise InvalidRequest("until must be after since")
    query = UsageQuery(group_by, owner, agent, type, start, end)
    totals = services.store.usage_totals(query)
    total = UsageTotal(
        key=None,
        leases=sum(t.leases for t in totals),
        gpu_seconds=sum(t.gpu_seconds for t in totals),
        vram_mb_seconds_est=sum(t.vram_mb_seconds_est for t in totals),
        vram_mb_seconds_peak=sum(t.vram_mb_seconds_peak for t in totals),
        measured_leases=sum(t.measured_leases for t in totals),
    )
    return UsageReport(
        group_by=group_by,
        owner=owner,
        agent=agent,
        type=type,
        since=utc(start),
        until=utc(end),
        groups=[UsageView.of(t) for t in totals],
        total=UsageView.of(total),
    )
