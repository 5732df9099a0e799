"""Agents and model evictions: the model lifecycle beyond preloads (issue 8).

An agent (a program that runs its own CUDA code under leases) registers its name, version,
capabilities and the models it needs (`POST /agents/register`, an upsert); `GET
/models/status?agent=NAME` then says whether all of them are warm.

An eviction (`POST /models/evict`) unloads a warm model from a node only when no active
lease or running job uses it there. It is delivered durably: a row in
`orchestrator_model_evictions`, which the worker holding the model picks up at its next
heartbeat. While the row exists, admission grants no lease for that model on that node
(`model_evicting`), so no job can start on a half-unloaded model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class Agent:
    """A registered agent."""

    name: str
    version: str
    capabilities: list[str]
    requires_models: list[str]
    owner: str
    registered_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class ModelUser:
    """Something that uses a model now: an active lease, or a claimed or running job."""

    kind: str  # lease | job
    id: str
    node: str | None
    agent: str | None = None


@dataclass(frozen=True)
class Eviction:
    """What an eviction request did: nodes already done (no live worker held the model)
    and nodes whose worker will unload it; or, when refused, who uses the model."""

    model_id: str
    evicted: list[str] = field(default_factory=list)
    evicting: list[str] = field(default_factory=list)
    users: list[ModelUser] = field(default_factory=list)

    @property
    def refused(self) -> bool:
        return bool(self.users)
