"""A local pool of worker processes, kept running (the pool of `orchestrator up`)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time

from orchestrator.children import die_with_parent
from workers.outcomes import RECORD_FOR_S

logger = logging.getLogger(__name__)

# Set in a pool worker's environment: the pid of the `orchestrator up` it belongs to.
PARENT_ENV = "ORCH_POOL_PARENT_PID"

# A worker that dies is restarted after this long, doubling while it keeps dying quickly.
RESTART_DELAY_S = 1.0
MAX_RESTART_DELAY_S = 30.0


class LocalPool:
    def __init__(self, size: int, worker_args: list[str], env: dict[str, str]) -> None:
        self.size = size
        self.command = worker_command(worker_args)
        self.env = {**env, PARENT_ENV: str(os.getpid())}
        self._procs: list[subprocess.Popen[bytes] | None] = [None] * size
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        for slot in range(self.size):
            self._spawn(slot)
        self._thread = threading.Thread(target=self._watch, name="pool", daemon=True)
        self._thread.start()

    def _spawn(self, slot: int) -> None:
        # Own process group: a Ctrl-C in the terminal reaches `up`, which stops us in order.
        self._procs[slot] = subprocess.Popen(self.command, env=self.env, start_new_session=True)
        logger.info(
            "worker process %d started (pid %d)",
            slot,
            self._procs[slot].pid,  # type: ignore[union-attr]
            extra={"event": "worker_process_started"},
        )

    def _watch(self) -> None:
        delays = [RESTART_DELAY_S] * self.size
        started = [time.monotonic()] * self.size
        while not self._stop.wait(0.5):
            for slot, proc in enumerate(self._procs):
                if proc is None or proc.poll() is None:
                    continue
                if time.monotonic() - started[slot] > MAX_RESTART_DELAY_S:
                    delays[slot] = RESTART_DELAY_S  # it had run a while: not a crash loop
                logger.warning(
                    "worker process %d exited with %s; restarting in %.0fs",
                    slot,
                    proc.returncode,
                    delays[slot],
                    extra={"event": "worker_process_exited"},
                )
                if self._stop.wait(delays[slot]):
                    return
                delays[slot] = min(delays[slot] * 2, MAX_RESTART_DELAY_S)
                started[slot] = time.monotonic()
                self._spawn(slot)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p is not None and p.poll() is None]

    def signal(self, signum: int) -> None:
        """Send a signal to every live worker."""
        for proc in self._procs:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signum)

    def stop(self, grace_s: float) -> None:
        """SIGTERM every worker (they finish or give back their jobs), then SIGKILL."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        live = [p for p in self._procs if p is not None and p.poll() is None]
        for proc in live:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + stop_deadline_s(grace_s)
        for proc in live:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.error(
                    "worker pid %d did not stop; killing it",
                    proc.pid,
                    extra={"event": "worker_process_killed"},
                )
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()


def worker_command(worker_args: list[str]) -> list[str]:
    """The command line of an `orchestrator worker` child process."""
    return [sys.executable, "-m", "orchestrator.cli", "worker", *worker_args]


def stop_deadline_s(grace_s: float) -> float:
    """How long a stopping worker may take after its SIGTERM: the grace period, then the
    time it may still spend recording outcomes."""
    return grace_s + RECORD_FOR_S + 5


def exit_with_pool_parent() -> None:
    """Called by a worker process: if `orchestrator up` started it, stop when `up` dies."""
    parent = os.environ.get(PARENT_ENV)
    if parent:
        die_with_parent()
        if os.getppid() != int(parent):  # it died before we asked
            os.kill(os.getpid(), signal.SIGTERM)
