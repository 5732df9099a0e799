"""The vocabulary of explain: a reason, the answer, and what the reasoning reads."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from orchestrator.admission import Limits
from orchestrator.gpu import Device
from orchestrator.jobs import Job
from orchestrator.leases import AdmissionPolicy, Lease
from orchestrator.models import ModelPlacement
from orchestrator.store.insight_base import QueuePlace


@dataclass(frozen=True)
class Reason:
    """One reason, with a stable `code`; `blocking`: the job cannot run until it goes away
    (the others say where it stands)."""

    code: str
    message: str
    blocking: bool = False
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The details, then the fixed fields (which a detail cannot shadow)."""
        return {
            **self.details,
            "code": self.code,
            "message": self.message,
            "blocking": self.blocking,
        }


@dataclass(frozen=True)
class Explanation:
    """The answer: `runnable` when no reason blocks, and the reasons in one sentence."""

    job_id: str
    status: str
    runnable: bool
    reasons: list[Reason]
    summary: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "status": self.status,
            "runnable": self.runnable,
            "reasons": [r.as_dict() for r in self.reasons],
            "summary": self.summary,
        }


@dataclass(frozen=True)
class ExplainInputs:
    """What the reasoning needs to know, read at `now`."""

    job: Job
    now: datetime
    place: QueuePlace
    live_workers: int  # live workers that serve the job's type
    safe_mode: bool = False
    leases: Sequence[Lease] = ()  # the job's own lease requests and leases, newest first
    devices: Sequence[Device] = ()
    active: Sequence[Lease] = ()  # every active lease
    waiting: Sequence[Lease] = ()  # every waiting lease request
    policy: AdmissionPolicy = field(default_factory=AdmissionPolicy)
    limits: Limits = field(default_factory=lambda: Limits(0, 30.0))
    # Each owner's decayed GPU-seconds, for the `fair_share` order (None: not known).
    usage: Mapping[str, float] | None = None
    # Where its model is warm, and where a worker for its type runs there (None: no model).
    model: ModelPlacement | None = None
    model_affinity_s: float = 0.0
    # Whether the caller may see other owners' leases (an admin); else they are redacted to
    # counts and MB, owner "another owner", no token or job id.
    sees_all: bool = True


def iso(moment: datetime | None) -> str | None:
    """Stored times are naive UTC: say so, as the rest of the API does."""
    if moment is None:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).isoformat()
