"""`SqlStore.claim_jobs` / `complete_jobs`: a group of attempts in one transaction, with the
same outcome, fencing and audit trail as one at a time."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from orchestrator.clock import FakeClock
from orchestrator.jobs import Dispatch, JobStatus, Priority
from orchestrator.store import SqlStore, sql_batches

from .store_helpers import WORKER, Submitter, claim, current, dispatch_of, event_names


def test_claim_jobs__claims_each_due_job_once(
    store: SqlStore, clock: FakeClock, submit: Submitter
) -> None:
    a, b, c = submit(), submit(), submit()
    claims = store.claim_jobs([dispatch_of(a), dispatch_of(b), dispatch_of(c)], WORKER, clock.now())
    assert [cl.job.id if cl else None for cl in claims] == [a.id, b.id, c.id]
    assert all(cl is not None and cl.job.status is JobStatus.RUNNING for cl in claims)
    tokens = [cl.token for cl in claims if cl]
    assert len(set(tokens)) == 3  # a fencing token of its own each ...
    assert {len(t) for t in tokens} == {32}
    assert len({t[: sql_batches.TOKEN_PREFIX] for t in tokens}) == 1  # ... with the group's prefix
    assert [t[-12:] for t in tokens] == [j.id[-12:] for j in (a, b, c)]
    for job in (a, b, c):
        assert current(store, job.id).attempts == 1
        assert event_names(store, job.id) == ["submitted", "started"]


def test_claim_jobs__stale_duplicate_and_misbanded_deliveries_get_none(
    store: SqlStore, clock: FakeClock, submit: Submitter
) -> None:
    taken, fresh, moved = submit(), submit(), submit()
    claim(store, clock, taken)  # already running elsewhere
    claims = store.claim_jobs(
        [
            dispatch_of(taken),
            dispatch_of(fresh),
            dispatch_of(fresh),  # the same message twice in one read
            dispatch_of(fresh, attempt=2),
            Dispatch(moved.id, moved.type, Priority.HIGH, 1),  # a band the job is not in
        ],
        "worker-b",
        clock.now(),
    )
    assert [cl is not None for cl in claims] == [False, True, False, False, False]
    assert current(store, taken.id).worker_id == WORKER
    assert current(store, fresh.id).attempts == 1
    assert event_names(store, fresh.id) == ["submitted", "started"]
    assert current(store, moved.id).status is JobStatus.PENDING


def test_claim_jobs__a_group_without_duplicates_checks_each_row_in_one_statement(
    store: SqlStore, clock: FakeClock, submit: Submitter
) -> None:
    taken, fresh, later, moved, plain = submit(), submit(), submit(), submit(), submit()
    claim(store, clock, taken)  # already running elsewhere
    claims = store.claim_jobs(
        [
            dispatch_of(taken),
            dispatch_of(fresh),
            dispatch_of(later, attempt=2),  # an attempt that is not the next one
            Dispatch(moved.id, moved.type, Priority.HIGH, 1),  # a band the job is not in
            dispatch_of(plain),
        ],  # five: a statement padded to eight rows
        "worker-b",
        clock.now(),
    )
    assert [cl is not None for cl in claims] == [False, True, False, False, True]
    assert current(store, taken.id).worker_id == WORKER
    for job in (later, moved):
        assert current(store, job.id).status is JobStatus.PENDING
        assert current(store, job.id).attempts == 0


def test_claim_jobs__more_than_one_statement_holds(
    store: SqlStore, clock: FakeClock, submit: Submitter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sql_batches, "MAX_ROWS", 4)
    jobs_ = [submit() for _ in range(10)]
    claims = store.claim_jobs([dispatch_of(j) for j in jobs_], WORKER, clock.now())
    assert [cl.job.id if cl else None for cl in claims] == [j.id for j in jobs_]
    outcomes = store.complete_jobs([(cl, i) for i, cl in enumerate(claims) if cl], clock.now())
    assert [o.status for o in outcomes] == [JobStatus.DONE] * 10
    assert [current(store, j.id).result for j in jobs_] == list(range(10))


def test_complete_jobs__completes_current_claims_and_fences_stale_ones(
    store: SqlStore, clock: FakeClock, submit: Submitter
) -> None:
    a, b, c = submit(), submit(), submit()
    ca, cb, cc = (claim(store, clock, j) for j in (a, b, c))
    store.cancel_job(b.id, clock.now(), "someone")  # asked to cancel while it ran
    stale = ca.__class__(job=cc.job, token="0" * 32, attempt=cc.attempt)
    outcomes = store.complete_jobs([(ca, {"n": 1}), (cb, {"n": 2}), (stale, {"n": 3})], clock.now())
    assert [o.status for o in outcomes] == [JobStatus.DONE, JobStatus.CANCELLED, None]
    assert current(store, a.id).result == {"n": 1}
    assert event_names(store, a.id)[-1] == "completed"
    assert event_names(store, b.id)[-1] == "cancelled"
    # The stale result changed nothing and is on the record; the real claim still holds.
    assert current(store, c.id).status is JobStatus.RUNNING
    assert event_names(store, c.id)[-1] == "stale_result_rejected"
    assert store.complete_jobs([(cc, None)], clock.now())[0].status is JobStatus.DONE


def test_complete_jobs__a_second_completion_of_the_same_claim_is_fenced(
    store: SqlStore, clock: FakeClock, submit: Submitter
) -> None:
    a, b = submit(), submit()
    ca, cb = claim(store, clock, a), claim(store, clock, b)
    outcomes = store.complete_jobs([(ca, 1), (ca, 2), (cb, 3)], clock.now())
    assert [o.status for o in outcomes] == [JobStatus.DONE, None, JobStatus.DONE]
    assert current(store, a.id).result == 1
    assert event_names(store, a.id).count("completed") == 1


@pytest.mark.parametrize("stale_first", [True, False])
def test_claim_jobs__a_stale_attempt_next_to_the_current_one_does_not_take_its_claim(
    store: SqlStore, clock: FakeClock, submit: Submitter, stale_first: bool
) -> None:
    retried, other = submit(max_attempts=3), submit()
    store.fail_job(claim(store, clock, retried), "boom", clock.now(), 0.0)  # attempt 2 is due
    stale, valid = dispatch_of(retried, attempt=1), dispatch_of(retried, attempt=2)
    pair = [stale, valid] if stale_first else [valid, stale]
    group = [*pair, dispatch_of(other)]
    claims = store.claim_jobs(group, WORKER, clock.now())
    by_dispatch = dict(zip(map(id, group), claims, strict=True))
    assert by_dispatch[id(stale)] is None
    won = by_dispatch[id(valid)]
    assert won is not None and won.attempt == 2 and won.job.id == retried.id
    assert claims[2] is not None and claims[2].job.id == other.id  # order kept
    assert current(store, retried.id).attempts == 2


def test_complete_jobs__statements_stay_within_the_packet_budget(
    store: SqlStore, clock: FakeClock, submit: Submitter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sql_batches, "MAX_STATEMENT_RESULT_BYTES", 2500)
    jobs_ = [submit() for _ in range(5)]
    claims = [claim(store, clock, j) for j in jobs_]
    results = [{"blob": "x" * 1000, "n": n} for n in range(4)] + [{"big": "y" * 3000}]
    sizes: list[int] = []

    def measure(
        conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool
    ) -> None:
        if statement.lstrip().upper().startswith("UPDATE ORCHESTRATOR_JOBS"):
            values = params if isinstance(params, (list, tuple)) else list(params.values())
            sizes.append(sum(len(v) for v in values if isinstance(v, str) and len(v) > 500))

    sa.event.listen(store.engine, "before_cursor_execute", measure)
    try:
        outcomes = store.complete_jobs(list(zip(claims, results, strict=True)), clock.now())
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", measure)
    assert [o.status for o in outcomes] == [JobStatus.DONE] * 5
    assert [current(store, j.id).result for j in jobs_] == results
    # Two results per statement, and the one past the budget alone.
    assert len(sizes) == 3 and max(sizes[:2]) <= 2500 and sizes[2] > 2500
