"""`GroupCommit`: callers that arrive while a write is in flight share the next write."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest

from orchestrator.errors import StoreUnavailable
from workers.batching import GroupCommit


class Writer:
    """Records each group; the first write blocks until released, so others queue up."""

    def __init__(self, fail_on: object = None, error: Exception | None = None) -> None:
        self.groups: list[list[int]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.fail_on = fail_on
        self.error = error

    def __call__(self, items: Sequence[int]) -> list[int]:
        self.groups.append(list(items))
        if len(self.groups) == 1:
            self.entered.set()
            assert self.release.wait(5)
        if self.error is not None and (self.fail_on is None or self.fail_on in items):
            raise self.error
        return [i * 10 for i in items]


def _run_concurrently(
    group: GroupCommit[int, int], writer: Writer, items: list[int]
) -> dict[int, object]:
    results: dict[int, object] = {}

    def call(i: int) -> None:
        try:
            results[i] = group(i)
        except Exception as exc:
            results[i] = exc

    # Daemons: a caller that never returns fails the test instead of hanging the run.
    first = threading.Thread(target=call, args=(items[0],), daemon=True)
    first.start()
    assert writer.entered.wait(5)
    rest = [threading.Thread(target=call, args=(i,), daemon=True) for i in items[1:]]
    for t in rest:
        t.start()
    while len(group._queue) < len(rest):  # all queued behind the first write
        threading.Event().wait(0.001)
    writer.release.set()
    for t in [first, *rest]:
        t.join(5)
    return results


def test_group_commit__one_caller_writes_alone_at_once() -> None:
    writer = Writer()
    writer.release.set()
    assert GroupCommit(writer)(7) == 70
    assert writer.groups == [[7]]


def test_group_commit__callers_waiting_on_a_write_share_the_next_one() -> None:
    writer = Writer()
    results = _run_concurrently(GroupCommit(writer), writer, [1, 2, 3, 4])
    assert results == {1: 10, 2: 20, 3: 30, 4: 40}
    assert writer.groups[0] == [1]
    assert sorted(writer.groups[1]) == [2, 3, 4]
    assert len(writer.groups) == 2


def test_group_commit__groups_are_bounded() -> None:
    writer = Writer()
    results = _run_concurrently(GroupCommit(writer, max_group=2), writer, [1, 2, 3, 4, 5])
    assert results == {i: i * 10 for i in range(1, 6)}
    assert [len(g) for g in writer.groups] == [1, 2, 2]


def test_group_commit__one_bad_item_fails_only_itself() -> None:
    writer = Writer(fail_on=3, error=ValueError("bad item"))
    results = _run_concurrently(GroupCommit(writer), writer, [1, 2, 3, 4])
    assert isinstance(results[3], ValueError)
    assert {i: results[i] for i in (1, 2, 4)} == {1: 10, 2: 20, 4: 40}


def test_group_commit__an_outage_fails_the_whole_group_without_retrying_each() -> None:
    writer = Writer(error=StoreUnavailable("database down"))
    group: GroupCommit[int, int] = GroupCommit(writer, shared=(StoreUnavailable,))
    results = _run_concurrently(group, writer, [1, 2, 3])
    assert all(isinstance(r, StoreUnavailable) for r in results.values())
    assert len(writer.groups) == 2  # the first write, then one for the two waiting


def test_group_commit__error_reaches_a_lone_caller() -> None:
    writer = Writer(error=StoreUnavailable("down"))
    writer.release.set()
    with pytest.raises(StoreUnavailable):
        GroupCommit(writer)(1)


def test_group_commit__a_writer_returning_the_wrong_count_fails_every_item_it_was_given() -> None:
    class Short(Writer):
        def __call__(self, items: Sequence[int]) -> list[int]:
            return super().__call__(items)[:1]

    writer = Short()
    group: GroupCommit[int, int] = GroupCommit(writer)
    results = _run_concurrently(group, writer, [1, 2, 3])
    assert results[1] == 10  # alone: one result, as it should be
    assert isinstance(results[2], RuntimeError) and isinstance(results[3], RuntimeError)
    assert len(writer.groups) == 2  # and nobody loops writing empty groups
