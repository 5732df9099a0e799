"""Group commit: slots that write at the same time share one transaction (or one round trip).

Each caller blocks until its own item is written, exactly as with a direct call, so the
order "commit the outcome, then ack" (DESIGN invariant 3) is unchanged. Nobody waits for
a group to fill: the first caller writes at once; callers that arrive while a write is in
flight go together in the next one. One slot alone pays nothing extra; busy slots pay one
commit per group.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

# A group never holds more than the callers waiting at once (a worker's slots); this only
# bounds the statements of one transaction.
MAX_GROUP = 64


class _Pending(Generic[T, R]):
    __slots__ = ("done", "error", "item", "lead", "result", "woken")

    def __init__(self, item: T) -> None:
        self.item = item
        self.done = False
        self.lead = False  # the next group is this caller's to write
        self.result: R | None = None
        self.error: BaseException | None = None
        # Held until this caller is woken: it waits on its own lock, so finishing a group
        # wakes only that group's callers and the next writer, never every waiting slot.
        self.woken = threading.Lock()
        self.woken.acquire()


class GroupCommit(Generic[T, R]):
    """Calls `write(items)` (one result per item, in order) for groups of concurrent calls.
    An error of a type in `shared` (an outage) fails the whole group; any other is taken
    as one item's fault, and the group is written again item by item."""

    def __init__(
        self,
        write: Callable[[Sequence[T]], Sequence[R]],
        *,
        shared: tuple[type[BaseException], ...] = (),
        max_group: int = MAX_GROUP,
    ) -> None:
        self._write = write
        self._shared = shared
        self._max = max(1, max_group)
        self._lock = threading.Lock()
        self._queue: list[_Pending[T, R]] = []
        self._busy = False

    def __call__(self, item: T) -> R:
        mine: _Pending[T, R] = _Pending(item)
        with self._lock:
            self._queue.append(mine)
            leads = not self._busy
            self._busy = True
        if not leads:
            mine.woken.acquire()  # until done, or until the next group is ours to write
        if not mine.done:
            self._lead()
        if mine.error is not None:
            raise mine.error
        return mine.result  # type: ignore[return-value]

    def _lead(self) -> None:
        """Write the next group (ours is in it: it is first in the queue), wake its callers,
        then hand the writing on to the first caller still waiting, if any."""
        with self._lock:
            group = self._queue[: self._max]
            del self._queue[: self._max]
        try:
            self._write_group(group)
        finally:
            with self._lock:
                following = self._queue[0] if self._queue else None
                if following is None:
                    self._busy = False
                else:
                    following.lead = True
            for p in group:
                p.woken.release()
            if following is not None:
                following.woken.release()

    def _write_group(self, group: list[_Pending[T, R]]) -> None:
        error: BaseException | None = None
        try:
            self._write_items(group)
        except BaseException as exc:
            error = exc
        finally:
            # Every item leaves done, or its caller would wait (or write an empty group)
            # forever: whatever went wrong past the handling below is each unfinished item's.
            for p in group:
                if not p.done:
                    p.error = error or RuntimeError("group write left the item unwritten")
                    p.done = True

    def _write_items(self, group: list[_Pending[T, R]]) -> None:
        try:
            results = list(self._write([p.item for p in group]))
        except BaseException as exc:
            if len(group) == 1 or isinstance(exc, self._shared):
                for p in group:
                    p.error = exc
                    p.done = True
                return
            # One bad item must not fail its neighbours: write each alone, each with its
            # own result or error.
            for p in group:
                self._write_group([p])
            return
        if len(results) != len(group):
            raise RuntimeError(f"group write returned {len(results)} results for {len(group)}")
        for p, result in zip(group, results, strict=True):
            p.result = result
            p.done = True
