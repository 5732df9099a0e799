"""Stopping a handler's thread from outside."""

from __future__ import annotations

import threading

import pytest

from workers.context import JobCancelled, JobInterrupted, JobTimeout
from workers.interrupt import raise_in_thread


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
