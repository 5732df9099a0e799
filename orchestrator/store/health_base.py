"""The storage boundary for GPU health (faults, quarantines, OOM estimates), agents and
model evictions."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

from orchestrator.agents import Agent, Eviction
from orchestrator.gpu_health import FaultRules, GpuFault, Quarantine
from orchestrator.jobs import Claim, GpuNeeds


class GpuHealthStore(Protocol):
    def record_gpu_fault(
        self, fault: GpuFault, now: datetime, rules: FaultRules
    ) -> Quarantine | None:
        """Store a fault; the device's new quarantine when this fault made one."""
        ...

    def list_quarantines(self, *, include_cleared: bool = False) -> list[Quarantine]: ...

    def clear_quarantine(
        self, node: str, index: int, now: datetime, actor: str
    ) -> Quarantine | None:
        """Lift a quarantine; None when the device was not quarantined, `NotFound` when
        the device is not known."""
        ...

    def raise_gpu_estimate(
        self, claim: Claim, gpu: GpuNeeds, now: datetime, detail: dict[str, Any]
    ) -> bool:
        """Store the job's new GPU needs while `claim` holds it (with an event)."""
        ...


class AgentStore(Protocol):
    def register_agent(self, agent: Agent, *, take_over: bool = False) -> Agent:
        """Insert or update the agent (keeping its first `registered_at`); `Conflict` when
        another owner registered it, unless `take_over`."""
        ...

    def get_agent(self, name: str) -> Agent | None: ...

    def list_agents(self) -> list[Agent]: ...

    def evict_model(
        self, model_id: str, node: str | None, now: datetime, actor: str, live_after: datetime
    ) -> Eviction:
        """Evict a warm model unless something uses it (see `SqlAgents.evict_model`)."""
        ...

    def pending_evictions(self, node: str) -> list[str]: ...

    def finish_eviction(
        self, node: str, model_id: str, *, not_held_by: str | None = None
    ) -> bool: ...
