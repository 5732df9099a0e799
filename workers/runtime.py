"""The worker: read deliveries, claim, run the handler, record the outcome, then ack.

Threads: the main loop reads from Redis, claims a job for each idle slot (one transaction
for them all, workers/claims.py) and hands the claims to `concurrency` slot threads; each
slot runs its handler and hands a successful result to the completions thread, which
commits and acks whatever results have come in together (workers/completions.py); a failure
the slot records itself. A monitor thread heartbeats running jobs, passes on cancellations
and enforces time limits.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import queue
import signal
import socket
import threading
import time
import traceback
from types import FrameType
from typing import Any

from orchestrator.clock import Clock, SystemClock
from orchestrator.errors import (
    OrchestratorError,
    StoreUnavailable,
    StreamsUnavailable,
    Unavailable,
)
from orchestrator.fleet import WorkerRegistration
from orchestrator.ids import new_token
from orchestrator.jobs import Claim
from orchestrator.lease_service import LeaseService
from orchestrator.leases import Lease
from orchestrator.settings import Settings
from orchestrator.store import Store
from orchestrator.store.codec import dumps
from orchestrator.streams import Delivery, Streams
from workers.claims import Claims
from workers.completions import Completions, Finished
from workers.context import (
    JobCancelled,
    JobContext,
    JobInterrupted,
    JobLeaseLost,
    JobTimeout,
)
from workers.gpu import JobGpus
from workers.gpu_health import GpuHealth
from workers.interrupt import clear_in_thread, raise_in_thread
from workers.models import ModelAffinity, WarmModels
from workers.monitor import Monitor, Running
from workers.observer import GIVEN_BACK_AFFINITY, WorkerObserver, WorkerView, outcome_of
from workers.outcomes import RECORD_FOR_S, OutcomeRecorder
from workers.registration import Registration
from workers.registry import HandlerRegistry

logger = logging.getLogger(__name__)

# How long a slot waits after a claim found the database down, before requeueing.
CLAIM_RETRY_S = 1.0
# Progress is a status line, not a result: it fits MariaDB's TEXT column.
MAX_PROGRESS_BYTES = 60_000
LEASE_LOST_ERROR = "its GPU lease expired (heartbeats failed): the devices were no longer ours"


class Worker:
    def __init__(
        self,
        store: Store,
        streams: Streams,
        registry: HandlerRegistry,
        settings: Settings,
        *,
        clock: Clock | None = None,
        job_types: list[str] | None = None,
        concurrency: int | None = None,
        worker_id: str | None = None,
        pool: str | None = None,
        models: WarmModels | None = None,
        affinity: ModelAffinity | None = None,
        observer: WorkerObserver | None = None,
    ) -> None:
        self.store = store
        self.streams = streams
        self.registry = registry
        self.settings = settings
        self.clock = clock or SystemClock()
        self.job_types = job_types or registry.types
        for job_type in self.job_types:
            registry.get(job_type)  # fail now, not at the first job
        self.concurrency = concurrency or settings.worker_concurrency
        self.id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{new_token()[:6]}"
        self.observer = observer or WorkerObserver()  # hooks: workers/observer.py
        self.outcomes = OutcomeRecorder(store, streams, self.clock, settings, self.observer)
        self._claims = Claims(store, self.id, self.clock)
        self.node = settings.resolved_node_name()
        self.models = models
        self.affinity = affinity
        self.gpus = JobGpus(
            LeaseService(store, settings, self.clock, self.observer.lease_metrics()),
            self.node,
            settings,
            outcomes=self.outcomes,
            on_outage=self._note_outage,
        )
        self.gpu_health = GpuHealth(store, settings, self.clock)
        self.pool = pool
        self.registration = Registration(
            store,
            self.clock,
            WorkerRegistration(
                id=self.id,
                node=settings.resolved_node_name(),
                pool=pool,
                pid=os.getpid(),
                job_types=list(self.job_types),
                concurrency=self.concurrency,
            ),
            self._note_outage,
        )

        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._cond = threading.Condition()
        self._idle = self.concurrency
        self._buffer: list[tuple[int, int, Delivery]] = []
        self._seq = itertools.count()
        # What each slot runs next: a delivery and its claim (None: a stale or duplicate
        # delivery, acked without running anything).
        # SimpleQueue (in C): handing a job to a slot is one lock, not Queue's three.
        self._work: queue.SimpleQueue[tuple[Delivery, Claim | None] | None] = queue.SimpleQueue()
        self._running: dict[str, Running] = {}  # by claim token
        self._outages: dict[type[Exception], str] = {}
        self._released: set[str] = set()  # tokens given back whose slot has not returned yet
        self.completed = 0  # outcomes committed (tests and benchmarks watch it)
        self._completions: Completions | None = None  # while `run` runs
        self.observer.bind(
            WorkerView(self.registration.worker, lambda: self._idle, lambda: len(self._running))
        )
        # Monotonic time of the monitor's last heartbeat turn (None before the first): the
        # worker's liveness as systemd's watchdog sees it (orchestrator/sdnotify.py).
        self.beat_at: float | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT: stop gracefully; a second one: stop now."""

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            if self._stopping.is_set():
                logger.warning(
                    "second signal: giving running jobs back now",
                    extra={"event": "worker_stop_now"},
                )
                self.settings = self.settings.model_copy(update={"shutdown_grace_s": 0})
                with self._cond:
                    self._cond.notify_all()
                return
            logger.info(
                "signal %d: stopping; running jobs get %.0fs to finish",
                signum,
                self.settings.shutdown_grace_s,
                extra={"event": "worker_stopping"},
            )
            self.stop()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    def stop(self) -> None:
        """Stop reading; `run` then drains and returns."""
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()

    def wait_stopped(self, timeout: float | None = None) -> bool:
        return self._stopped.wait(timeout)

    def run(self) -> None:
        """Serve until `stop`, then finish or give back every job, leaving nothing claimed."""
        logger.info(
            "worker %s serving %s with %d slots",
            self.id,
            ",".join(self.job_types),
            self.concurrency,
            extra={"event": "worker_started", "worker": self.id},
        )
        # Not retried here: a database outage must not hold up serving; the monitor's next
        # heartbeat registers it.
        self.registration.register()
        self._call_until_ok(lambda: self.streams.ensure_groups(self.job_types))
        self._completions = Completions(
            self.store,
            self.clock,
            self.outcomes,
            max_pending=self.concurrency,
            on_recorded=self._count_completed,
        )
        threads = [
            threading.Thread(target=self._slot, name=f"slot-{i}", daemon=True)
            for i in range(self.concurrency)
        ]
        monitor = Monitor(
            self.store,
            self.clock,
            lambda: self.settings,
            self._running_now,
            self._note_outage,
            self._touch_buffered,
            on_heartbeat=self._beat_registration,
        )
        threads.append(
            threading.Thread(target=monitor.run, args=(self._stopped,), name="monitor", daemon=True)
        )
        for t in threads:
            t.start()
        try:
            while not self._stopping.is_set():
                self._step()
        finally:
            self._drain()
            # The row is marked stopped before `wait_stopped` returns: whoever waited for
            # the stop must not still see this worker listed as running.
            try:
                self.registration.stop()
            finally:
                self._stopped.set()
            logger.info("worker %s stopped", self.id, extra={"event": "worker_stopped"})

    def _count_completed(self, n: int) -> None:
        with self._cond:
            self.completed += n

    def _beat_registration(self) -> None:
        """Each heartbeat: the worker's row, with the jobs it runs now."""
        self.beat_at = time.monotonic()
        running = self._running_now()
        self.registration.beat([r.claim.job.id for r in running], draining=self._stopping.is_set())
        if self.models is not None:
            in_use = {r.claim.job.gpu.model_id for r in running if r.claim.job.gpu}
            self.models.carry_out_evictions(in_use)

    # -- the main loop ----------------------------------------------------------------------

    def _step(self) -> None:
        with self._cond:
            while self._idle == 0 and not self._stopping.is_set():
                self._cond.wait(0.5)
            # With more than half the slots busy, wait a moment for more to come free, so
            # that one claim transaction serves several: the read side of group commit.
            # Never longer than `claim_linger_ms`, and not at all when half the slots or more
            # are free (an idle worker starts a job at once).
            until = time.monotonic() + self.settings.claim_linger_ms / 1000
            while 0 < 2 * self._idle < self.concurrency and not self._stopping.is_set():
                left = until - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            free = self._idle
        if self._stopping.is_set():
            return
        # Keep at most `concurrency` read ahead, so new urgent jobs are not stuck behind many.
        if len(self._buffer) < self.concurrency:
            block_ms = 0 if self._buffer else self.settings.read_block_ms
            started = time.monotonic()
            for delivery in self._read(free, block_ms):
                heapq.heappush(
                    self._buffer, (delivery.dispatch.priority, next(self._seq), delivery)
                )
            if not self._buffer:
                # Some Redis stand-ins (fakeredis) answer a blocking read at once: don't spin.
                if (time.monotonic() - started) * 1000 < block_ms / 2:
                    self._stopping.wait(0.05)
                return
        if self._stopping.is_set():
            return  # read while a stop came in: the drain puts these back, unstarted
        with self._cond:
            taken = [
                heapq.heappop(self._buffer)[2] for _ in range(min(self._idle, len(self._buffer)))
            ]
            self._idle -= len(taken)
        if taken:
            self._hand_out(taken)

    def _hand_out(self, deliveries: list[Delivery]) -> None:
        """Claim what the free slots will run, all in one transaction (one commit for as
        many jobs as slots came free together), and give each slot its claim."""
        try:
            work, down, down_error = self._claims.claim(deliveries)
        except Unavailable as exc:
            self._put_back(deliveries, exc)
            return
        except Exception:
            # Nothing was handed out: the messages stay pending here, for redelivery or the
            # reclaimer, and the slots are free again. One bad batch must not stop the loop.
            logger.exception(
                "worker %s: could not hand out %d deliveries",
                self.id,
                len(deliveries),
                extra={"event": "slot_error"},
            )
            self._free_slots(len(deliveries))
            return
        self._free_slots(len(deliveries) - len(work) - len(down))
        for item in work:
            self._work.put(item)
        if down_error is not None:
            self._put_back(down, down_error)
        else:
            self._note_recovery(StoreUnavailable)

    def _put_back(self, deliveries: list[Delivery], exc: Unavailable) -> None:
        """Not claimed, the database being down: put them back for later rather than leave
        them pending here; wait a little first, or the same messages come straight back."""
        try:
            self._note_outage(exc)
            self._stopping.wait(CLAIM_RETRY_S)
            self._requeue(deliveries)
        finally:
            self._free_slots(len(deliveries))

    def _free_slots(self, n: int) -> None:
        if n:
            with self._cond:
                self._idle += n
                self._cond.notify_all()

    def _read(self, count: int, block_ms: int) -> list[Delivery]:
        try:
            deliveries = self.streams.read(self.id, self.job_types, count, block_ms)
        except Unavailable as exc:
            self._note_outage(exc)
            self._stopping.wait(1.0)
            return []
        self._note_recovery(StreamsUnavailable)
        return deliveries

    def _note_outage(self, exc: Exception) -> None:
        """Log an outage once, however often it is hit; the database and Redis apart."""
        with self._cond:
            first = type(exc) not in self._outages
            self._outages[type(exc)] = str(exc)
        if first:
            logger.error("worker %s: %s; retrying", self.id, exc, extra={"event": "outage"})

    def _note_recovery(self, kind: type[Exception]) -> None:
        with self._cond:
            was = self._outages.pop(kind, None)
        if was is not None:
            logger.info(
                "worker %s: reconnected after: %s", self.id, was, extra={"event": "recovered"}
            )

    def _call_until_ok(self, fn: Any) -> None:
        while not self._stopping.is_set():
            try:
                fn()
                self._note_recovery(StreamsUnavailable)
                return
            except Unavailable as exc:
                self._note_outage(exc)
                self._stopping.wait(1.0)

    # -- slots ----------------------------------------------------------------------------

    def _slot(self) -> None:
        while True:
            work = self._work.get()
            if work is None:
                return
            delivery, claim = work
            try:
                self._process(delivery, claim)
            except (Exception, JobInterrupted):
                logger.exception(
                    "worker %s: failed to process a delivery",
                    self.id,
                    extra={
                        "event": "slot_error",
                        "job_id": delivery.dispatch.job_id,
                        "attempt": delivery.dispatch.attempt,
                    },
                )
            finally:
                with self._cond:
                    self._idle += 1
                    # Wake the read loop only when it may go on: it waits for a first free
                    # slot, or (lingering) for half of them. A wake-up per job cost more
                    # than the claim it would start.
                    if self._idle == 1 or 2 * self._idle >= self.concurrency:
                        self._cond.notify_all()

    def _process(self, delivery: Delivery, claim: Claim | None) -> None:
        dispatch = delivery.dispatch
        if claim is None:
            logger.debug(
                "stale or duplicate delivery of job %s attempt %d: skipped",
                dispatch.job_id,
                dispatch.attempt,
                extra={
                    "event": "claim_skipped",
                    "job_id": dispatch.job_id,
                    "attempt": dispatch.attempt,
                },
            )
            self.observer.delivery_skipped(dispatch)
            self.outcomes.ack(delivery)
            return
        self.observer.job_claimed(claim)
        if self.affinity is not None and self.affinity.should_defer(claim.job, self.clock.now()):
            # Its model is warm on another live node: leave the job to that node for a
            # while. `available_at` stays, so the affinity window still ends.
            model = claim.job.gpu.model_id if claim.job.gpu else None
            why = f"model {model} is warm on another node"
            self.gpus.give_back(claim, delivery, why, delay_s=0.0, kind=GIVEN_BACK_AFFINITY)
            return
        lease: Lease | None = None
        if claim.job.gpu is not None:
            lease = self.gpus.take(claim, delivery, abandon=self._stopping.is_set)
            if lease is None:
                return
        running = self._prepare(claim, delivery, lease)
        self.observer.job_started(claim)
        status, value = self._run_handler(running)
        if lease is not None:
            # Faults first: a quarantine must be written before the lease's release can hand
            # the failing card to the next request.
            self.gpu_health.after_attempt(claim, lease, running.ctx, status, value)
            self.gpus.release(lease, peak_vram_mb=running.ctx.peak_vram_mb, success=status == "ok")
        with running.lock:
            if running.released:
                with self._cond:
                    self._released.discard(claim.token)
                    self._cond.notify_all()
                return  # shutdown gave the job back; its outcome is no longer ours
        status, value = self.outcomes.checked(status, value)
        # A result is committed and acked with the other slots' results; this slot takes
        # its next job meanwhile (workers/completions.py). Once those are closed (a drain
        # that ran out of time), the slot records its result itself, below.
        completions = self._completions
        if status == "ok" and completions and completions.put(Finished(claim, delivery, value)):
            return
        try:
            if self.outcomes.record(claim, delivery, status, value):
                self._count_completed(1)
        except Exception as exc:
            self.outcomes.fail_unrecordable(claim, delivery, exc)

    def _prepare(self, claim: Claim, delivery: Delivery, lease: Lease | None = None) -> Running:
        job = claim.job

        def report(progress: Any) -> None:
            size = len(dumps(progress).encode())
            if size > MAX_PROGRESS_BYTES:
                raise ValueError(f"progress is {size} bytes; the limit is {MAX_PROGRESS_BYTES}")
            self.store.record_progress(claim, progress, self.clock.now())

        ctx = JobContext(
            job_id=job.id,
            job_type=job.type,
            payload=job.payload,
            attempt=claim.attempt,
            max_attempts=job.max_attempts,
            timeout_s=job.timeout_s,
            report_progress=report,
            gpu=self.gpus.assignment(lease),
            models=self.models,
        )
        running = Running(
            claim=claim,
            delivery=delivery,
            ctx=ctx,
            thread_id=threading.get_ident(),
            deadline=time.monotonic() + job.timeout_s,
            lease=lease,
            lease_until=(
                time.monotonic() + lease.ttl_s - self.settings.heartbeat_interval_s
                if lease is not None
                else None
            ),
        )
        logger.info(
            "job %s attempt %d started",
            job.id,
            claim.attempt,
            extra={"event": "job_started", "job_id": job.id, "attempt": claim.attempt},
        )
        return running

    def _run_handler(self, running: Running) -> tuple[str, Any]:
        """Run the handler; returns ("ok", result), ("timeout"|"cancelled", None) or
        ("error", message)."""
        outcome: tuple[str, Any] | None = None
        try:
            try:
                # Registered for the monitor here, inside the guarded region: an interrupt
                # may land from this point on.
                with self._cond:
                    self._running[running.claim.token] = running
                fn = self.registry.get(running.claim.job.type)
                outcome = ("ok", fn(running.ctx))
            except JobTimeout:
                outcome = ("timeout", None)
            except JobCancelled:
                outcome = ("cancelled", None)
            except JobLeaseLost:
                outcome = ("error", LEASE_LOST_ERROR)
            except (Exception, SystemExit) as exc:
                outcome = ("error", _describe(exc))
            finally:
                with running.lock:
                    running.finished = True
                    if running.interrupt is not None:
                        clear_in_thread(running.thread_id)
        except JobInterrupted as late:
            # The interrupt landed after the handler returned, before it was marked finished.
            if outcome is None:
                if isinstance(late, JobLeaseLost):
                    outcome = ("error", LEASE_LOST_ERROR)
                else:
                    outcome = ("timeout" if isinstance(late, JobTimeout) else "cancelled", None)
        finally:
            with self._cond:
                self._running.pop(running.claim.token, None)
        assert outcome is not None
        return outcome

    def _touch_buffered(self) -> None:
        """Messages read ahead wait here while the slots are busy: keep them fresh."""
        buffered = [item[2] for item in list(self._buffer)]
        self.streams.touch(self.id, buffered)

    def _running_now(self) -> list[Running]:
        with self._cond:
            return list(self._running.values())

    # -- shutdown -------------------------------------------------------------------------

    def _drain(self) -> None:
        with self._cond:
            unstarted = [item[2] for item in self._buffer]
            self._buffer.clear()
        self._requeue(unstarted)
        deadline = time.monotonic() + self.settings.shutdown_grace_s
        with self._cond:
            while self._idle < self.concurrency and time.monotonic() < deadline:
                remaining = deadline - time.monotonic()
                self._cond.wait(min(0.2, max(remaining, 0.0)))
                # A second signal sets the grace to 0: stop waiting at once.
                deadline = min(deadline, time.monotonic() + self.settings.shutdown_grace_s)
            leftovers = list(self._running.values())
        for r in leftovers:
            self._give_back(r)
        # Slots that finished their handler (or were claiming) may still be recording an
        # outcome: let them commit and ack it, or the job would be left running.
        deadline = time.monotonic() + RECORD_FOR_S
        with self._cond:
            while self._idle + len(self._released) < self.concurrency:
                if time.monotonic() >= deadline:
                    logger.error(
                        "worker %s: slots still busy at exit",
                        self.id,
                        extra={"event": "drain_incomplete"},
                    )
                    break
                self._cond.wait(0.2)
        # The results the slots handed over: committed and acked before we go.
        completions = self._completions
        if completions is not None and not completions.close(max(deadline - time.monotonic(), 0)):
            logger.error(
                "worker %s: results still unrecorded at exit; the reclaimer recovers them",
                self.id,
                extra={"event": "drain_incomplete"},
            )
        for _ in range(self.concurrency):
            self._work.put(None)

    def _give_back(self, r: Running) -> None:
        with r.lock:
            if r.finished:
                return
            r.released = True
            with self._cond:
                self._released.add(r.claim.token)
            r.ctx._set_cancelled()
            raise_in_thread(r.thread_id, JobCancelled)
        try:
            outcome = self.store.release_job(r.claim, self.clock.now())
        except OrchestratorError as exc:
            logger.error(
                "job %s: could not give it back (%s); the reclaimer will",
                r.claim.job.id,
                exc,
                extra={
                    "event": "release_failed",
                    "job_id": r.claim.job.id,
                    "attempt": r.claim.attempt,
                },
            )
            return
        logger.warning(
            "job %s attempt %d: given back unfinished (%s)",
            r.claim.job.id,
            r.claim.attempt,
            outcome.status,
            extra={"event": "job_released", "job_id": r.claim.job.id, "attempt": r.claim.attempt},
        )
        self.observer.job_finished(r.claim, outcome_of(outcome))
        self.outcomes.ack(r.delivery)

    def _requeue(self, deliveries: list[Delivery]) -> None:
        if not deliveries:
            return
        try:
            self.streams.requeue(deliveries)
        except Exception as exc:  # an outage, or a Redis error: either way, not fatal here
            logger.error(
                "could not requeue %d deliveries (%s); they stay pending for the reclaimer",
                len(deliveries),
                exc,
                exc_info=not isinstance(exc, Unavailable),
                extra={"event": "requeue_failed"},
            )


def _describe(exc: BaseException) -> str:
    lines = traceback.format_exception_only(type(exc), exc)
    text = "".join(lines).strip()[:4000]
    # A message may hold lone surrogates (os.fsdecode of bad bytes): not storable as UTF-8.
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
