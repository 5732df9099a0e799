"""Routes for model preload and status."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator

from orchestrator.api.agents import agent_models
from orchestrator.api.jobs import ERRORS, rate_limit
from orchestrator.api.schemas import ModelId, utc
from orchestrator.api.security import ANY_ROLE, Submitter
from orchestrator.model_service import ModelService
from orchestrator.models import (
    MAX_PRELOAD_MODELS,
    ModelOverview,
    PreloadStatus,
)

router = APIRouter(tags=["models"])


class PreloadRequest(BaseModel):
    """Models to warm: each is a folder under the workers' model store."""

    model_config = ConfigDict(extra="forbid")

    models: list[ModelId] = Field(min_length=1, max_length=MAX_PRELOAD_MODELS)
    refresh: bool = Field(False, description="Load again even where warm or already being loaded.")

    @field_validator("models")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("a model appears twice")
        return value


class QueuedView(BaseModel):
    model_id: str
    job_id: str


class SkippedView(BaseModel):
    model_id: str
    reason: Literal["warm", "in_progress"]
    status: PreloadStatus | None
    warm_on: list[str]


class PreloadResponse(BaseModel):
    queued: list[QueuedView]
    skipped: list[SkippedView]


class ModelStatusView(BaseModel):
    model_id: str
    status: PreloadStatus
    node: str | None = Field(description="Where the preload last ran.")
    error: str | None
    job_id: str | None
    requested_at: datetime | None
    updated_at: datetime | None
    warm_on: list[str]


class SummaryView(BaseModel):
    total: int
    done: int
    failed: int


class ModelsStatusView(BaseModel):
    in_progress: list[str] = Field(description="Models whose preload is queued or loading.")
    summary: SummaryView
    errors: dict[str, str] = Field(description="Why each failed preload failed, by model.")
    all_ready: bool = Field(
        description="Every requested model is loaded and warm (true when none was requested)."
    )
    models: list[ModelStatusView]

    @classmethod
    def of(cls, overview: ModelOverview) -> ModelsStatusView:
        return cls(
            in_progress=overview.in_progress(),
            summary=SummaryView(
                total=len(overview.preloads),
                done=overview.count(PreloadStatus.DONE),
                failed=overview.count(PreloadStatus.FAILED),
            ),
            errors=overview.errors(),
            all_ready=overview.all_ready(),
            models=[
                ModelStatusView(
                    model_id=p.model_id,
                    status=p.state,
                    node=p.node,
                    error=p.reason,
                    job_id=p.job_id,
                    requested_at=utc(p.requested_at),
                    updated_at=utc(p.updated_at),
                    warm_on=overview.warm_on(p.model_id),
                )
                for p in overview.preloads
            ],
        )


class AgentModelsStatusView(ModelsStatusView):
    """`?agent=NAME`: the status of the models that agent requires."""

    agent: str
    not_ready: list[str] = Field(description="Its required models not warm on any node.")


class WarmView(BaseModel):
    model_id: str
    worker_id: str | None
    size_bytes: int | None
    loaded_at: datetime | None


class NodeModelsView(BaseModel):
    node: str
    models: list[WarmView]


class WarmModelsView(BaseModel):
    nodes: list[NodeModelsView]

    @classmethod
    def of(cls, overview: ModelOverview) -> WarmModelsView:
        by_node: dict[str, list[WarmView]] = {}
        for w in overview.warm:
            by_node.setdefault(w.node, []).append(
                WarmView(
                    model_id=w.model_id,
                    worker_id=w.worker_id,
                    size_bytes=w.size_bytes,
                    loaded_at=utc(w.loaded_at),
                )
            )
        return cls(nodes=[NodeModelsView(node=n, models=m) for n, m in sorted(by_node.items())])


def _models(request: Request) -> ModelService:
    service: ModelService = request.app.state.services.models
    return service


@router.post("/models/preload", status_code=202, response_model=PreloadResponse, responses=ERRORS)
def preload(body: PreloadRequest, request: Request, who: Submitter) -> PreloadResponse:
    """Warm models on the workers: one `preloads` job per model. Without `refresh`, a model
    already warm somewhere or being loaded is skipped, and listed in `skipped`."""
    result = _models(request).preload(
        body.models, refresh=body.refresh, owner=who.owner, charge=rate_limit(request, who)
    )
    return PreloadResponse(
        queued=[QueuedView(model_id=q.model_id, job_id=q.job_id) for q in result.queued],
        skipped=[
            SkippedView(model_id=s.model_id, reason=s.reason, status=s.status, warm_on=s.warm_on)
            for s in result.skipped
        ],
    )


@router.get(
    "/models/status",
    response_model=Annotated[
        AgentModelsStatusView | ModelsStatusView, Field(union_mode="left_to_right")
    ],
    responses=ERRORS,
    dependencies=[Depends(ANY_ROLE)],
)
def models_status(
    request: Request,
    model: Annotated[list[ModelId] | None, Query(max_length=MAX_PRELOAD_MODELS)] = None,
    agent: Annotated[str | None, Query(min_length=1, max_length=128)] = None,
) -> AgentModelsStatusView | ModelsStatusView:
    """The preloads: in progress, done, failed (with why), and where each model is warm.
    `?model=A&model=B` limits it to those models; `?agent=NAME` to the models a registered
    agent requires, with `all_ready` true when each of them is warm somewhere."""
    if agent is None:
        return ModelsStatusView.of(_models(request).overview(model or None))
    required = agent_models(request, agent)
    wanted = [*required, *(m for m in model or () if m not in required)]
    overview = _models(request).overview(wanted) if wanted else ModelOverview([], [])
    not_ready = [m for m in required if not overview.warm_on(m)]
    return AgentModelsStatusView(
        **ModelsStatusView.of(overview).model_dump(exclude={"all_ready"}),
        all_ready=not not_ready,
        agent=agent,
        not_ready=not_ready,
    )


@router.get(
    "/models", response_model=WarmModelsView, responses=ERRORS, dependencies=[Depends(ANY_ROLE)]
)
def warm_models(request: Request) -> WarmModelsView:
    """The models warm on each node."""
    return WarmModelsView.of(_models(request).overview())
