"""Stopping a handler's thread from outside."""

from __future__ import annotations

import threading
from datetime import datetime
from unittest.mock import MagicMock

import pytest

from orchestrator.jobs import Claim, Job, JobStatus, Priority
from workers.context import JobCancelled, JobContext, JobInterrupted, JobLeaseLost, JobTimeout
from workers.interrupt import raise_in_thread
from workers.monitor import Monitor, Running


class _Spinner:
    """A thread busy in a pure-Python loop that records what exception stopped it."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.give_up = threading.Event()  # a safety stop, so a failing test cannot hang
        self.caught: BaseException | None = None
        self.iterations = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.started.set()  # inside the try: the exception may land while this returns
            while not self.give_up.is_set():
                self.iterations += 1
        except BaseException as exc:  # record it; an escaping one would fail the run
            self.caught = exc

    def __enter__(self) -> _Spinner:
        self.thread.start()
        assert self.started.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        self.give_up.set()
        self.thread.join(5)


@pytest.mark.parametrize("exc_type", [JobTimeout, JobCancelled, KeyboardInterrupt, ValueError])
def test_raise_in_thread__stops_a_pure_python_loop_with_that_exception(
    exc_type: type[BaseException],
) -> None:
    with _Spinner() as spinner:
        assert spinner.thread.ident is not None
        assert raise_in_thread(spinner.thread.ident, exc_type) is True
        spinner.thread.join(5)
        assert not spinner.thread.is_alive()
        assert type(spinner.caught) is exc_type
        assert not spinner.give_up.is_set()  # it stopped because of the exception


def test_raise_in_thread__job_interruptions_escape_except_exception() -> None:
    # Handlers often catch Exception; the interruptions must get past them.
    assert not issubclass(JobTimeout, Exception)
    assert issubclass(JobCancelled, JobInterrupted)


def test_raise_in_thread__unknown_thread_returns_false() -> None:
    # No pthread id is 1 (they are addresses), so no thread has this id.
    assert raise_in_thread(1, JobTimeout) is False


def test_monitor__stops_a_handler_whose_lease_surely_expired_unheard() -> None:
    """Cut off from the database, a worker cannot hear that its job's lease expired: once
    the lease's ttl has passed since its last renewal, the handler is stopped anyway."""
    now = datetime(2026, 1, 1)
    job = Job(
        "j1", "t", JobStatus.RUNNING, Priority.NORMAL, None, 1, 3, 60.0, "o", None, now, now, now
    )
    with _Spinner() as spinner:
        running = Running(
            claim=Claim(job, "tok", 1),
            delivery=MagicMock(),
            ctx=JobContext(
                job_id="j1",
                job_type="t",
                payload=None,
                attempt=1,
                max_attempts=3,
                timeout_s=60,
                report_progress=lambda _: None,
            ),
            thread_id=spinner.thread.ident or 0,
            deadline=1e12,
            lease=MagicMock(),
            lease_until=100.0,
        )
        monitor = Monitor(MagicMock(), MagicMock(), MagicMock(), lambda: [running], MagicMock())

        monitor.enforce_limits(99.0)
        assert running.interrupt is None
        monitor.enforce_limits(100.0)
        spinner.thread.join(5)

    assert isinstance(spinner.caught, JobLeaseLost)
    assert running.ctx.cancelled
