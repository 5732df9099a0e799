"""The reclaimer: recover work whose worker died, and messages that Redis lost.

One pass (a leader loop, and POST /control/reclaim on any replica) does three things:

1. The database's view: attempts whose heartbeat is older than the visibility timeout lost
   their worker. Each job is requeued (with a fresh message) while attempts remain, else
   dead-lettered with a copy on its DLQ stream. A job that runs for hours but heartbeats is
   never touched: liveness is the heartbeat, not a fixed timeout.
2. Redis's view: XAUTOCLAIM, to the end of every job stream's pending list, takes over
   messages idle past the visibility timeout. A message for a job that was never claimed
   (its consumer died holding it) is put back on its stream; one for a job that moved on
   is acked; one for a running job is left for (1) to judge by its heartbeat. Entries
   deleted while pending are acked, and (3) republishes their jobs.
3. The outbox relay: a waiting job published a while ago whose message is in no stream
   (lost with a Redis restart, or never sent because the API died after its commit) is
   published again. A healthy backlog is left alone, so the stream grows by no duplicates.

Every write is a conditional update, and every duplicate message fails its claim, so a
pass is safe on any replica at any time.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

from orchestrator.clock import Clock
from orchestrator.errors import Unavailable
from orchestrator.jobs import (
    ACTIVE_STATUSES,
    CLAIMABLE_STATUSES,
    LOST_WORKER_ERROR,
    Dispatch,
    JobStatus,
)
from orchestrator.metrics import Metrics
from orchestrator.settings import Settings
from orchestrator.store import Store
from orchestrator.streams import Delivery, Streams

logger = logging.getLogger(__name__)

CONSUMER = "reclaimer"
BATCH = 1000


@dataclass
class ReclaimReport:
    scanned: int = 0
    requeued: int = 0
    dead_lettered: int = 0
    republished: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class Reclaimer:
    def __init__(
        self,
        store: Store,
        streams: Streams,
        settings: Settings,
        clock: Clock,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.streams = streams
        self.settings = settings
        self.clock = clock
        self.metrics = metrics or Metrics()
        # Where the relay's check goes on next pass: old waiting jobs must not hide new ones.
        self._relay_cursor: tuple[datetime, str] | None = None

    def reclaim(self, *, judge_heartbeats: bool = True, relay: bool = True) -> ReclaimReport:
        """One pass. The leader skips the heartbeat check until its leadership has lasted a
        visibility timeout, and runs the relay's check less often (it reads whole streams)."""
        report = ReclaimReport()
        if judge_heartbeats:
            self._stale_attempts(report)
        self._stale_messages(report)
        if relay:
            self._lost_messages(report)
        try:
            for job_type in {t for _, t, _ in self.streams.job_streams()}:
                self.streams.prune_consumers(job_type, int(self.settings.consumer_idle_s * 1000))
        except Unavailable as exc:
            logger.warning("could not prune consumers: %s", exc, extra={"event": "prune_failed"})
        for outcome in ("requeued", "dead_lettered", "republished"):
            self.metrics.reclaimed.labels(outcome).inc(getattr(report, outcome))
        if report.requeued or report.dead_lettered or report.republished:
            logger.warning(
                "reclaim: %s",
                report.as_dict(),
                extra={"event": "reclaimed", "count": report.requeued},
            )
        return report

    def _stale_attempts(self, report: ReclaimReport) -> None:
        while True:
            now = self.clock.now()
            stale_before = now - timedelta(seconds=self.settings.visibility_timeout_s)
            batch = self.store.reclaim_stale(now, stale_before, BATCH)
            report.scanned += len(batch)
            requeued = [
                Dispatch(r.job_id, r.type, r.priority, r.attempt + 1)
                for r in batch
                if r.status is JobStatus.PENDING
            ]
            report.requeued += len(requeued)
            self._publish(requeued)
            for r in batch:
                if r.status is JobStatus.DEAD_LETTER:
                    report.dead_lettered += 1
                    self.metrics.dead_letters.labels(r.type).inc()
                    try:
                        self.streams.dead_letter(r.dispatch, LOST_WORKER_ERROR)
                    except Unavailable as exc:
                        # The row says dead_letter, and GET /dlq lists it: only the copy
                        # on the DLQ stream is missing.
                        logger.error(
                            "job %s: dead-lettered, but not copied to the DLQ stream: %s",
                            r.job_id,
                            exc,
                            extra={
                                "event": "dlq_copy_failed",
                                "job_id": r.job_id,
                                "attempt": r.attempt,
                            },
                        )
            if len(batch) < BATCH:
                return

    def _publish(self, dispatches: list[Dispatch]) -> None:
        if dispatches:
            self.store.mark_published(dispatches, self.clock.now())
            try:
                self.streams.publish(dispatches)
            except Unavailable:
                self.store.mark_unpublished([d.job_id for d in dispatches])
                raise

    def _stale_messages(self, report: ReclaimReport) -> None:
        idle_ms = int(self.settings.visibility_timeout_s * 1000)
        for stream, job_type, _ in self.streams.job_streams():
            claimed, deleted = self.streams.autoclaim(stream, job_type, CONSUMER, idle_ms)
            report.scanned += len(claimed) + deleted
            states = self.store.job_attempts([d.dispatch.job_id for d in claimed])
            unclaimed: list[Delivery] = []
            finished: list[Delivery] = []
            for d in claimed:
                status, attempts = states.get(d.dispatch.job_id, (None, None))
                if status in CLAIMABLE_STATUSES and attempts == d.dispatch.attempt - 1:
                    unclaimed.append(d)
                elif not (status in ACTIVE_STATUSES and attempts == d.dispatch.attempt):
                    finished.append(d)
            self.streams.requeue(unclaimed)
            self.streams.ack(finished)
            report.requeued += len(unclaimed)

    def _lost_messages(self, report: ReclaimReport) -> None:
        now = self.clock.now()
        cutoff = now - timedelta(seconds=self.settings.relay_grace_s)
        waiting, self._relay_cursor = self.store.waiting_published_before(
            cutoff, self.settings.relay_batch, after=self._relay_cursor
        )
        by_stream: dict[str, list[Dispatch]] = {}
        for d in waiting:
            by_stream.setdefault(self.streams.stream_of(d), []).append(d)
        missing: list[Dispatch] = []
        for stream, dispatches in by_stream.items():
            present = self.streams.dispatches_in(stream)
            missing += [d for d in dispatches if (d.job_id, d.attempt) not in present]
        # A job claimed, finished and acked during the scan looks missing too: only one still
        # waiting at the same attempt lost its message.
        states = self.store.job_attempts([d.job_id for d in missing])
        lost = [
            d
            for d in missing
            if (s := states.get(d.job_id)) and s[0] in CLAIMABLE_STATUSES and s[1] == d.attempt - 1
        ]
        self._publish(lost)
        report.republished += len(lost)
