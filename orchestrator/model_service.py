"""`ModelService`: what the API does with models, independent of HTTP."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from orchestrator.api.schemas import SubmitRequest
from orchestrator.clock import Clock
from orchestrator.errors import Unavailable
from orchestrator.models import (
    IN_PROGRESS,
    PRELOAD_JOB_TYPE,
    ModelOverview,
    PreloadResult,
    Queued,
    Skipped,
    check_model_ids,
)
from orchestrator.service import JobService
from orchestrator.store import Store

logger = logging.getLogger(__name__)

# The normal band: preloads go on stream:orchestrator:preloads, the name other programs
# know (a preload is usually asked for before the work that needs it, not in a rush).
PRELOAD_PRIORITY = "normal"


class ModelService:
    """Model preloads (one `preloads` job per model) and what is warm where."""

    def __init__(self, store: Store, jobs: JobService, clock: Clock) -> None:
        self.store = store
        self.jobs = jobs
        self.clock = clock

    def preload(
        self,
        model_ids: Sequence[str],
        *,
        refresh: bool = False,
        owner: str = "anonymous",
        charge: Callable[[int], None] | None = None,
    ) -> PreloadResult:
        """Submit a preload job for each model. Without `refresh`, a model already warm on
        some node, or whose preload is in progress, is skipped (and said so). `charge`: the
        owner's submit rate limit, charged with the number of preloads queued."""
        self.jobs.limits.check_preload_count(len(model_ids))
        ids = check_model_ids(model_ids)
        skipped: list[Skipped] = []
        if not refresh:
            skipped = _skips(self.store.model_overview(ids), ids)
        skip = {s.model_id for s in skipped}
        wanted = [m for m in ids if m not in skip]
        requests = [
            SubmitRequest(
                type=PRELOAD_JOB_TYPE,
                payload={"model_id": m, "refresh": refresh},
                priority=PRELOAD_PRIORITY,
            )
            for m in wanted
        ]
        # Durable and published like any job: from here on the preloads happen.
        submitted = self.jobs.submit(requests, owner, charge) if requests else []
        queued = [Queued(m, s.job.id) for m, s in zip(wanted, submitted, strict=True)]
        try:
            self.store.queue_preloads([(q.model_id, q.job_id) for q in queued], self.clock.now())
        except Unavailable as exc:
            # The jobs are committed and will run; their workers write the preload rows.
            logger.warning(
                "preload jobs submitted but not recorded as queued: %s",
                exc,
                extra={"event": "preload_record_deferred"},
            )
        if queued:
            logger.info(
                "preloading %s",
                ",".join(q.model_id for q in queued),
                extra={"event": "preload_requested", "refresh": refresh},
            )
        return PreloadResult(queued, skipped)

    def overview(self, model_ids: Sequence[str] | None = None) -> ModelOverview:
        """The preloads and warm models (of these models, or of all)."""
        if model_ids is not None:
            model_ids = check_model_ids(list(dict.fromkeys(model_ids)))
        return self.store.model_overview(model_ids)


def _skips(overview: ModelOverview, model_ids: Sequence[str]) -> list[Skipped]:
    by_id = {p.model_id: p for p in overview.preloads}
    skipped: list[Skipped] = []
    for model_id in model_ids:
        preload = by_id.get(model_id)
        state = preload.state if preload else None
        warm_on = overview.warm_on(model_id)
        if warm_on:
            skipped.append(Skipped(model_id, "warm", state, warm_on))
        elif state is not None and state in IN_PROGRESS:
            skipped.append(Skipped(model_id, "in_progress", state))
    return skipped
