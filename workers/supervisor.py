"""`orchestrator node`: the supervisor of a GPU host's worker pools.

Every `pool_reconcile_interval_s` it reads the pools this node keeps (those of this node,
and those of no node) and matches its worker processes to them:

- active: `desired` workers (`orchestrator worker --pool NAME`). Extra ones get SIGTERM,
  idle ones first: they finish their running jobs, or give them back after
  `shutdown_grace_s`. A worker that exits on its own is restarted, after a delay that
  doubles while it keeps dying young (1 s up to 30 s).
- draining: SIGTERM to each worker; once none is left, the pool becomes `stopped`
  (conditionally: no live worker on any node).
- stopped, or gone: SIGTERM, then a second SIGTERM, so running jobs are given back now.

A worker still alive `shutdown_grace_s` + 65 s after its first signal is killed. If the
database does not answer, the workers are left as they are. SIGTERM or SIGINT stops the
supervisor: its workers stop as above; a second signal has them give their jobs back now.

Each node supervisor keeps its own `desired` workers of a pool of no node: such a pool
has `desired` workers on every node that runs a supervisor.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import FrameType

from orchestrator.clock import Clock, SystemClock
from orchestrator.errors import OrchestratorError, Unavailable
from orchestrator.fleet import Pool, PoolStatus
from orchestrator.settings import EMBEDDED, Settings
from orchestrator.store import Store
from workers.pool import (
    MAX_RESTART_DELAY_S,
    PARENT_ENV,
    RESTART_DELAY_S,
    stop_deadline_s,
    worker_command,
)

logger = logging.getLogger(__name__)

# A stopped pool's workers get their second SIGTERM (give jobs back now) this long after
# the first, so the two are not merged into one by the receiving process.
SECOND_SIGNAL_S = 0.5

Spawn = Callable[[list[str], dict[str, str]], "subprocess.Popen[bytes]"]


def _popen(command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    # Own session: a Ctrl-C in the terminal reaches the supervisor, which stops them in order.
    return subprocess.Popen(command, env=env, start_new_session=True)


@dataclass
class Child:
    """A worker process of one pool."""

    pool: str
    proc: subprocess.Popen[bytes]
    started: float  # monotonic
    signals: int = 0  # SIGTERMs sent: 1 = finish and exit, 2 = give jobs back now
    signalled_at: float = 0.0
    killed: bool = False


@dataclass
class Backoff:
    delay: float = RESTART_DELAY_S
    not_before: float = 0.0


class NodeSupervisor:
    def __init__(
        self,
        store: Store,
        settings: Settings,
        *,
        node: str,
        worker_args: list[str],
        env: dict[str, str],
        clock: Clock | None = None,
        spawn: Spawn = _popen,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.settings = settings
        self.node = node
        self.worker_args = worker_args
        self.env = {**env, "ORCH_NODE_NAME": node, PARENT_ENV: str(os.getpid())}
        self.clock = clock or SystemClock()
        self._spawn = spawn
        self._monotonic = monotonic  # restart delays and kill deadlines (a fake in tests)
        self.children: list[Child] = []
        self._backoff: dict[str, Backoff] = {}
        self._stop = threading.Event()
        self._outage: str | None = None
        # Monotonic time the loop last finished a turn (None before the first): its liveness
        # as systemd's watchdog sees it (orchestrator/sdnotify.py). Real time, not the fake.
        self.turned_at: float | None = None

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> None:
        """Reconcile until `stop`, then stop every worker."""
        logger.info(
            "node supervisor of %s started",
            self.node,
            extra={"event": "supervisor_started", "node": self.node},
        )
        while not self._stop.is_set():
            try:
                self.reconcile()
            except Exception:
                logger.exception("reconcile failed", extra={"event": "supervisor_error"})
            self.turned_at = time.monotonic()
            self._stop.wait(self.settings.pool_reconcile_interval_s)
        self.shutdown()

    def stop(self) -> None:
        self._stop.set()

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT: stop; a second one: the workers give their jobs back now."""

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            if self._stop.is_set():
                logger.warning(
                    "second signal: workers give their running jobs back now",
                    extra={"event": "supervisor_stop_now"},
                )
                self._signal_all()
                return
            logger.info(
                "signal %d: stopping the workers of %s",
                signum,
                self.node,
                extra={"event": "supervisor_stopping"},
            )
            self.stop()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    def shutdown(self) -> None:
        """SIGTERM every worker not yet told to stop (they finish or give back their jobs);
        wait for them all, killing any still running past its time."""
        self._terminate(self.children, self._monotonic(), give_back=False)
        limit = stop_deadline_s(self.settings.shutdown_grace_s)
        for child in self.children:
            try:
                child.proc.wait(max(0.0, child.signalled_at + limit - self._monotonic()))
            except subprocess.TimeoutExpired:
                self._kill_overdue(self._monotonic())
                child.proc.wait()
        self._reap(self._monotonic())
        logger.info(
            "node supervisor of %s stopped",
            self.node,
            extra={"event": "supervisor_stopped", "node": self.node},
        )

    def _signal_all(self) -> None:
        for child in list(self.children):
            if child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)

    # -- one pass -----------------------------------------------------------------------------

    def reconcile(self) -> None:
        """Match the worker processes to the pools, once."""
        now = self._monotonic()
        self._reap(now)
        stale_before = self.clock.now() - timedelta(seconds=self.settings.visibility_timeout_s)
        try:
            pools = {p.name: p for p in self.store.list_pools(stale_before, node=self.node)}
        except Unavailable as exc:
            if self._outage is None:
                logger.error(
                    "cannot read the pools (%s); the workers stay as they are",
                    exc,
                    extra={"event": "supervisor_outage"},
                )
            self._outage = str(exc)
            self._kill_overdue(now)
            return
        if self._outage is not None:
            logger.info("reading the pools again", extra={"event": "supervisor_recovered"})
            self._outage = None
        for name in sorted(set(pools) | {c.pool for c in self.children}):
            pool = pools.get(name)
            mine = [c for c in self.children if c.pool == name]
            if pool is None or pool.status is PoolStatus.STOPPED:
                self._terminate(mine, now, give_back=True)
            elif pool.status is PoolStatus.DRAINING:
                self._terminate(mine, now, give_back=False)
                if not mine and self._finish_drain(pool, stale_before):
                    logger.info(
                        "pool %s drained: stopped",
                        name,
                        extra={"event": "pool_drained", "pool": name},
                    )
            else:
                self._keep(pool, mine, now)
        self._kill_overdue(now)

    def _keep(self, pool: Pool, mine: list[Child], now: float) -> None:
        serving = [c for c in mine if c.signals == 0]
        extra = len(serving) - pool.desired
        if extra > 0:
            victims = self._idlest(pool.name, serving)[:extra]
            logger.info(
                "pool %s: stopping %d of %d worker processes",
                pool.name,
                extra,
                len(serving),
                extra={"event": "pool_scaling_down", "pool": pool.name},
            )
            self._terminate(victims, now, give_back=False)
        elif extra < 0:
            backoff = self._backoff.get(pool.name)
            if backoff is not None and now < backoff.not_before:
                return
            for _ in range(-extra):
                self._start(pool.name, now)

    def _start(self, pool: str, now: float) -> None:
        args = ["--pool", pool, *self.worker_args]
        proc = self._spawn(worker_command(args), self.env)
        self.children.append(Child(pool, proc, now))
        logger.info(
            "pool %s: worker process started (pid %d)",
            pool,
            proc.pid,
            extra={"event": "worker_process_started", "pool": pool, "pid": proc.pid},
        )

    def _idlest(self, pool: str, serving: list[Child]) -> list[Child]:
        """The children with the fewest running jobs first (newest first among equals)."""
        try:
            rows = self.store.list_workers(pool=pool, node=self.node)
            jobs = {w.pid: len(w.current_jobs) for w in rows if w.pid is not None}
        except Unavailable:
            jobs = {}
        return sorted(serving, key=lambda c: (jobs.get(c.proc.pid, 0), -c.started))

    def _terminate(self, children: list[Child], now: float, *, give_back: bool) -> None:
        for child in children:
            if child.proc.poll() is not None:
                continue
            if child.signals == 0 or (
                give_back and child.signals == 1 and now - child.signalled_at >= SECOND_SIGNAL_S
            ):
                child.proc.send_signal(signal.SIGTERM)
                child.signals += 1
                child.signalled_at = child.signalled_at or now

    def _kill_overdue(self, now: float) -> None:
        limit = stop_deadline_s(self.settings.shutdown_grace_s)
        for child in self.children:
            if child.signals and not child.killed and now - child.signalled_at > limit:
                if child.proc.poll() is None:
                    logger.error(
                        "worker pid %d of pool %s did not stop; killing it",
                        child.proc.pid,
                        child.pool,
                        extra={"event": "worker_process_killed", "pool": child.pool},
                    )
                    child.proc.kill()
                child.killed = True

    def _reap(self, now: float) -> None:
        """Forget exited children; one that exited unasked delays the next start."""
        for child in [c for c in self.children if c.proc.poll() is not None]:
            self.children.remove(child)
            code = child.proc.returncode
            if child.signals:
                logger.info(
                    "pool %s: worker pid %d exited (%s)",
                    child.pool,
                    child.proc.pid,
                    code,
                    extra={"event": "worker_process_stopped", "pool": child.pool},
                )
                continue
            backoff = self._backoff.setdefault(child.pool, Backoff())
            if now - child.started > MAX_RESTART_DELAY_S:
                backoff.delay = RESTART_DELAY_S  # it had run a while: not a crash loop
            backoff.not_before = now + backoff.delay
            logger.warning(
                "pool %s: worker pid %d exited with %s; restarting in %.0fs",
                child.pool,
                child.proc.pid,
                code,
                backoff.delay,
                extra={"event": "worker_process_exited", "pool": child.pool, "code": code},
            )
            backoff.delay = min(backoff.delay * 2, MAX_RESTART_DELAY_S)

    def _finish_drain(self, pool: Pool, stale_before: datetime) -> bool:
        try:
            return self.store.finish_drain(pool.name, self.clock.now(), stale_before)
        except Unavailable:
            return False  # the leader's pass, or our next one, finishes it


def run_node(settings: Settings, *, imports: list[str]) -> int:
    """`orchestrator node`: supervise this node's pools until SIGTERM/SIGINT."""
    from orchestrator.migrate import check_at_head
    from orchestrator.sdnotify import Notifier, recent
    from orchestrator.wiring import build_store

    # First, before the workers' environment is copied from ours: they must not inherit
    # NOTIFY_SOCKET (this process is the unit's main one; systemd refuses the others).
    notifier = Notifier.from_env()
    if settings.redis_url == EMBEDDED and not settings.embedded_redis_socket().exists():
        raise OrchestratorError(
            f"no embedded Redis at {settings.embedded_redis_socket()} for the workers: start "
            "`orchestrator up` (and point ORCH_DATA_DIR at its data folder), or set ORCH_REDIS_URL"
        )
    store = build_store(settings)
    try:
        check_at_head(store.engine)
        env = {
            **os.environ,
            "ORCH_DATABASE_URL": settings.resolved_database_url(),
            "ORCH_REDIS_URL": settings.resolved_redis_url(),
        }
        worker_args = ["--import", ",".join(imports)] if imports else []
        supervisor = NodeSupervisor(
            store,
            settings,
            node=settings.resolved_node_name(),
            worker_args=worker_args,
            env=env,
        )
        supervisor.install_signal_handlers()
        notifier.stopping_on_signals(signal.SIGTERM, signal.SIGINT)
        # READY=1 after the first pass (its workers started); the watchdog is fed while the
        # loop goes on turning, and no longer once it stops (STOPPING=1).
        stale_s = notifier.stale_after(settings.pool_reconcile_interval_s)
        watchdog = notifier.watch(
            recent(lambda: supervisor.turned_at, stale_s),
            ready=lambda: supervisor.turned_at is not None,
            status=f"node supervisor of {supervisor.node}",
            describe=lambda: f"node {supervisor.node}: {len(supervisor.children)} workers",
        )
        try:
            supervisor.run()
        finally:
            watchdog.stop()
            notifier.close()
    finally:
        store.close()
    return 0
