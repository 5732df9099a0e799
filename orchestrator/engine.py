"""The engine: the background loops, run by the elected leader only.

- The scheduler (every tick): publishes jobs that fell due (delayed submits, retries after
  backoff, jobs whose publish failed) and, when Redis turns out to have lost its data, has
  every waiting job published again (DESIGN invariant 1).
- The reclaimer (every `reclaim_interval_s`): see `orchestrator.reclaimer`.
- The pool policy (right after each reclaim pass): see `orchestrator.pool_policy`.
- The lease sweep (every `lease_sweep_interval_s`): expires leases that were not
  heartbeated and grants waiting requests in policy order (`orchestrator.lease_service`).

Every action is a conditional update or a harmless duplicate message, so two engines that
briefly overlap during a failover do no harm (DESIGN invariant 5).
"""

from __future__ import annotations

import logging
import threading
import time

from orchestrator.clock import Clock
from orchestrator.errors import Unavailable
from orchestrator.lease_service import LeaseService
from orchestrator.pool_policy import PoolPolicy
from orchestrator.reclaimer import Reclaimer
from orchestrator.settings import Settings
from orchestrator.store import Store
from orchestrator.store.election import Election
from orchestrator.streams import Streams

logger = logging.getLogger(__name__)

PUBLISH_BATCH = 1000
# The state row holding the last Redis epoch an engine saw.
REDIS_EPOCH = "redis_epoch"


class Engine:
    def __init__(
        self,
        store: Store,
        streams: Streams,
        settings: Settings,
        clock: Clock,
        election: Election,
        reclaimer: Reclaimer,
        pool_policy: PoolPolicy | None = None,
        leases: LeaseService | None = None,
    ) -> None:
        self.store = store
        self.streams = streams
        self.settings = settings
        self.clock = clock
        self.election = election
        self.reclaimer = reclaimer
        self.pool_policy = pool_policy
        self.leases = leases
        self._next_sweep = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._outage: str | None = None
        self._epoch: str | None = None
        self._next_reclaim = 0.0
        self._next_relay = 0.0
        self._leading_since: float | None = None

    @property
    def leading(self) -> bool:
        return self.election.leading

    def tick(self) -> int:
        """One pass of the scheduler; returns how many jobs it published."""
        epoch = self.streams.epoch()
        if epoch != self._epoch:
            self._check_epoch(epoch)
        published = 0
        while True:
            now = self.clock.now()
            due = self.store.due_dispatches(now, PUBLISH_BATCH)
            if not due:
                return published
            # Marked first: a message that a worker acks as early (its clock behind ours)
            # unmarks the job again, and that must not be undone by a later mark.
            self.store.mark_published(due, now)
            try:
                self.streams.publish(due)
            except Unavailable:
                self.store.mark_unpublished([d.job_id for d in due])
                raise
            published += len(due)
            if len(due) < PUBLISH_BATCH:
                return published

    def _check_epoch(self, epoch: str) -> None:
        """Redis's epoch differs from the one this engine last saw: compare it with the one
        remembered in the database, which outlives engine restarts. A Redis whose epoch is not
        the remembered one started empty since (restart without persistence, FLUSHALL) and
        lost what we had published, so every waiting job is marked to be published again.
        The first engine of a database adopts the epoch it finds: whatever was published
        before went to this Redis."""
        known = self.store.get_state(REDIS_EPOCH)
        if epoch != known:
            if known is not None:
                count = self.store.unpublish_waiting()
                if count:
                    logger.warning(
                        "redis has none of our data (new, restarted or flushed): "
                        "publishing %d waiting jobs again",
                        count,
                        extra={"event": "redis_data_lost", "count": count},
                    )
            self.store.put_state(REDIS_EPOCH, epoch, self.clock.now())
        self._epoch = epoch

    def step(self) -> None:
        """One turn of the loop: keep or seek the leadership; lead if we have it."""
        if not self.election.check(self.clock.now()):
            self._epoch = None  # a new leadership re-checks Redis against the database
            self._leading_since = None
            return
        now = time.monotonic()
        if self._leading_since is None:
            self._leading_since = now
        # Leases need the database only: swept before the scheduler, which a Redis outage
        # stops.
        if self.leases is not None and now >= self._next_sweep:
            self._next_sweep = now + self.settings.lease_sweep_interval_s
            try:
                self.leases.sweep()
            except Unavailable:
                raise
            except Exception:
                # A bad turn of the sweep (a deadlock, say) must not stop the scheduler.
                logger.exception("lease sweep failed", extra={"event": "lease_sweep_error"})
        self.tick()
        if now >= self._next_reclaim:
            self._next_reclaim = now + self.settings.reclaim_interval_s
            relay = now >= self._next_relay
            if relay:
                self._next_relay = now + self.settings.relay_interval_s
            # Heartbeats are judged only once this leadership has lasted a visibility timeout:
            # a leadership gained after a database outage (the election drops it on any
            # database error) must give live workers time to heartbeat again first.
            judge = now - self._leading_since >= self.settings.visibility_timeout_s
            try:
                self.reclaimer.reclaim(judge_heartbeats=judge, relay=relay)
            finally:
                # Pools are sized from the database alone: a Redis outage must not stop it.
                if self.pool_policy is not None:
                    self.pool_policy.run(judge_heartbeats=judge)

    def run(self) -> None:
        """Step until stopped, riding out database and Redis outages."""
        while not self._stop.is_set():
            try:
                self.step()
                if self._outage:
                    logger.info(
                        "engine recovered from: %s",
                        self._outage,
                        extra={"event": "engine_recovered"},
                    )
                    self._outage = None
                    # Workers could not heartbeat either: judge heartbeats only after a
                    # visibility timeout from now.
                    self._leading_since = time.monotonic() if self.leading else None
            except Unavailable as exc:
                if self._outage is None:  # once per outage, not once per tick
                    logger.error("engine paused: %s", exc, extra={"event": "engine_outage"})
                self._outage = str(exc)
            except Exception:
                logger.exception("engine step failed", extra={"event": "engine_error"})
            self._stop.wait(self.settings.scheduler_interval_s)

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self.run, name="engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        try:
            self.election.resign(self.clock.now())
        except Exception:
            logger.warning(
                "could not resign the leadership; it will expire",
                exc_info=True,
                extra={"event": "resign_failed"},
            )
