"""The worker's claims: the read loop claims the jobs it hands out together in one
transaction (`Store.claim_jobs`), so one commit serves as many jobs as slots came free."""

from __future__ import annotations

import logging

from orchestrator.clock import Clock
from orchestrator.errors import Unavailable
from orchestrator.jobs import Claim
from orchestrator.store import Store
from orchestrator.streams import Delivery

logger = logging.getLogger(__name__)

# What the slots run: a delivery and its claim (None: a stale or duplicate delivery, which
# the slot acks without running anything).
Work = tuple[Delivery, Claim | None]


class Claims:
    def __init__(self, store: Store, worker_id: str, clock: Clock) -> None:
        self.store = store
        self.worker_id = worker_id
        self.clock = clock

    def claim(
        self, deliveries: list[Delivery]
    ) -> tuple[list[Work], list[Delivery], Unavailable | None]:
        """The deliveries' claims, as (work for the slots, deliveries to put back because
        the database went down meanwhile, that outage). Raises Unavailable when the
        database is down for them all. A delivery whose claim failed for any other reason
        is in neither list: it stays pending (redelivered after the visibility timeout, or
        reclaimed)."""
        work: list[Work] = []
        down: list[Delivery] = []
        down_error: Unavailable | None = None
        for delivery, claim in zip(deliveries, self._claim(deliveries), strict=True):
            if isinstance(claim, Unavailable):
                down.append(delivery)
                down_error = claim
            elif isinstance(claim, BaseException):
                logger.error(
                    "worker %s: could not claim job %s: %s",
                    self.worker_id,
                    delivery.dispatch.job_id,
                    claim,
                    exc_info=claim,
                    extra={
                        "event": "slot_error",
                        "job_id": delivery.dispatch.job_id,
                        "attempt": delivery.dispatch.attempt,
                    },
                )
            else:
                work.append((delivery, claim))
        return work, down, down_error

    def _claim(self, deliveries: list[Delivery]) -> list[Claim | Exception | None]:
        """One claim per delivery. An outage fails them all; any other error is taken as one
        job's fault, and each is then claimed on its own, so one cannot fail the others (an
        outage meanwhile is then that job's error: `claim` puts it in the list to put back)."""
        dispatches = [d.dispatch for d in deliveries]
        try:
            return list(self.store.claim_jobs(dispatches, self.worker_id, self.clock.now()))
        except Unavailable:
            raise
        except Exception as exc:  # reported by `claim`, per job
            if len(dispatches) == 1:
                return [exc]
        claims: list[Claim | Exception | None] = []
        for dispatch in dispatches:
            try:
                claims.append(self.store.claim_job(dispatch, self.worker_id, self.clock.now()))
            except Exception as exc:  # reported by `claim`, per job
                claims.append(exc)
        return claims
