"""Routes for the model lifecycle beyond preloads: agents and model evictions
(see orchestrator/agents.py)."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator

from orchestrator.agents import Agent, Eviction
from orchestrator.api.jobs import ERRORS
from orchestrator.api.schemas import ModelId, utc
from orchestrator.api.security import ANY_ROLE, Admin, AnyRole
from orchestrator.errors import Conflict, NotFound
from orchestrator.models import MAX_PRELOAD_MODELS
from orchestrator.wiring import Services

logger = logging.getLogger(__name__)

router = APIRouter(tags=["models"])

MAX_CAPABILITIES = 64

# No control character (Unicode category Cc: C0, DEL and C1), as `InputLimits.check_names`
# rules for names: these strings go into logs and the CLI's tables, where a newline or an
# escape sequence would forge or garble a line.
PRINTABLE = r"^[^\x00-\x1f\x7f-\x9f]+$"
Name = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[^\s\x00-\x1f\x7f-\x9f]+$")]
Printable = Annotated[str, Field(min_length=1, max_length=128, pattern=PRINTABLE)]


class RegisterBody(BaseModel):
    """An agent and the models it needs (registering again replaces what it said)."""

    model_config = ConfigDict(extra="forbid")

    agent: Name
    version: Annotated[str, Field(min_length=1, max_length=64, pattern=PRINTABLE)]
    capabilities: list[Printable] = Field(default_factory=list, max_length=MAX_CAPABILITIES)
    requires_models: list[ModelId] = Field(default_factory=list, max_length=MAX_PRELOAD_MODELS)

    @field_validator("requires_models", "capabilities")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("an entry appears twice")
        return value


class AgentView(BaseModel):
    agent: str
    version: str
    capabilities: list[str]
    requires_models: list[str]
    owner: str
    registered_at: datetime | None
    updated_at: datetime | None

    @classmethod
    def of(cls, a: Agent) -> AgentView:
        return cls(
            agent=a.name,
            version=a.version,
            capabilities=a.capabilities,
            requires_models=a.requires_models,
            owner=a.owner,
            registered_at=utc(a.registered_at),
            updated_at=utc(a.updated_at),
        )


class AgentsView(BaseModel):
    agents: list[AgentView]


class EvictBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_id: ModelId
    node: Printable | None = Field(
        None, description="Only this node (default: every node where it is warm)."
    )


class EvictView(BaseModel):
    model_id: str
    evicted: list[str] = Field(description="Nodes where nothing held it any more: done.")
    evicting: list[str] = Field(
        description="Nodes whose worker unloads it at its next heartbeat; no lease for the "
        "model is granted there until it has."
    )


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def agent_models(request: Request, name: str) -> list[str]:
    """The models a registered agent requires; `NotFound` for an unknown agent."""
    agent = _services(request).store.get_agent(name)
    if agent is None:
        raise NotFound(f"no agent {name} has registered", agent=name)
    return agent.requires_models


@router.post("/agents/register", response_model=AgentView, responses=ERRORS)
def register_agent(body: RegisterBody, request: Request, who: AnyRole) -> AgentView:
    """Record an agent, its version, capabilities and the models it needs (an upsert);
    `GET /models/status?agent=NAME` then says whether they are all warm. An agent another
    owner registered is a 409 (an admin may take it over)."""
    services = _services(request)
    now = services.clock.now()
    agent = services.store.register_agent(
        Agent(
            name=body.agent,
            version=body.version,
            capabilities=body.capabilities,
            requires_models=body.requires_models,
            owner=who.owner,
            registered_at=now,
            updated_at=now,
        ),
        take_over=who.is_admin,
    )
    logger.info(
        "agent %s %s registered by %s",
        agent.name,
        agent.version,
        who.owner,
        extra={"event": "agent_registered"},
    )
    return AgentView.of(agent)


@router.get(
    "/agents", response_model=AgentsView, responses=ERRORS, dependencies=[Depends(ANY_ROLE)]
)
def list_agents(request: Request) -> AgentsView:
    """Every registered agent."""
    return AgentsView(agents=[AgentView.of(a) for a in _services(request).store.list_agents()])


@router.post("/models/evict", status_code=202, response_model=EvictView, responses=ERRORS)
def evict_model(body: EvictBody, request: Request, who: Admin) -> EvictView:
    """Unload a warm model from a node (or from every node where it is warm). Refused with
    409 while an active lease or a claimed or running job uses it there (`details.users`
    says which); 404 when it is not warm there."""
    services = _services(request)
    now = services.clock.now()
    live_after = now - timedelta(seconds=services.settings.visibility_timeout_s)
    result: Eviction = services.store.evict_model(
        body.model_id, body.node, now, who.owner, live_after
    )
    if result.refused:
        raise Conflict(
            f"model {body.model_id} is in use: "
            + ", ".join(f"{u.kind} {u.id} on {u.node or 'an unknown node'}" for u in result.users),
            model_id=body.model_id,
            users=[
                {"kind": u.kind, "id": u.id, "node": u.node, "agent": u.agent} for u in result.users
            ],
        )
    logger.info(
        "model %s eviction asked by %s: evicted on %s, evicting on %s",
        body.model_id,
        who.owner,
        ",".join(result.evicted) or "-",
        ",".join(result.evicting) or "-",
        extra={"event": "model_evict_requested", "model_id": body.model_id},
    )
    return EvictView(model_id=body.model_id, evicted=result.evicted, evicting=result.evicting)
