"""The leader's pool policy: the sizing rules (`plan`), and whole passes over a SQLite store
with a fake clock."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from orchestrator.clock import FakeClock
from orchestrator.errors import Conflict, InvalidRequest, PoolExists, PoolNotFound
from orchestrator.fleet import (
    Demand,
    Pool,
    PoolChange,
    PoolLimits,
    PoolSpec,
    PoolStatus,
    WorkerRegistration,
    WorkerStatus,
)
from orchestrator.pool_policy import WORKER_RETENTION_S, PoolPolicy, plan
from orchestrator.settings import Settings
from orchestrator.store import SqlStore
from orchestrator.store.tables import worker_pools

from .store_helpers import Submitter, claim

T0 = datetime(2026, 1, 1, 12, 0, 0)
MAX_TOTAL = 64


def pool(**overrides: Any) -> Pool:
    values: dict[str, Any] = {
        "name": "gpu",
        "node": None,
        "job_types": ["inference_jobs"],
        "model_id": None,
        "concurrency": 2,
        "desired": 2,
        "running": 2,
        "min_warm": 1,
        "max_workers": 8,
        "idle_timeout_s": 60.0,
        "status": PoolStatus.ACTIVE,
        "last_busy_at": None,
        "created_at": T0,
        "updated_at": T0,
    }
    return Pool(**{**values, **overrides})


def sizes(changes: list[PoolChange]) -> dict[str, tuple[int, str]]:
    return {c.name: (c.desired, c.reason) for c in changes}


# -- the rules --------------------------------------------------------------------------------


def test_plan__clamps_desired_into_its_bounds() -> None:
    pools = [pool(name="low", desired=0, min_warm=2), pool(name="high", desired=20)]
    decided = plan(pools, {"inference_jobs": Demand(running=1)}, T0, MAX_TOTAL)
    assert sizes(decided.changes) == {"low": (2, "clamped"), "high": (8, "clamped")}


def test_plan__idle_past_the_timeout__scales_down_to_min_warm() -> None:
    idle = pool(desired=5, last_busy_at=T0)
    assert plan([idle], {}, T0 + timedelta(seconds=59), MAX_TOTAL).changes == []
    decided = plan([idle], {}, T0 + timedelta(seconds=60), MAX_TOTAL)
    assert sizes(decided.changes) == {"gpu": (1, "idle")}
    assert decided.changes[0].expected_desired == 5


def test_plan__a_recent_resize_restarts_the_idle_clock() -> None:
    resized = pool(desired=5, last_busy_at=T0, updated_at=T0 + timedelta(seconds=50))
    assert plan([resized], {}, T0 + timedelta(seconds=100), MAX_TOTAL).changes == []


def test_plan__running_jobs_keep_a_pool_busy() -> None:
    busy = pool(desired=5, last_busy_at=T0 - timedelta(hours=1))
    decided = plan([busy], {"inference_jobs": Demand(running=1)}, T0, MAX_TOTAL)
    assert decided.changes == []
    assert decided.activity[0].busy_at == T0


def test_plan__other_types_do_not_keep_a_pool_busy() -> None:
    idle = pool(desired=3)
    decided = plan([idle], {"echo": Demand(waiting=10)}, T0 + timedelta(hours=1), MAX_TOTAL)
    assert sizes(decided.changes) == {"gpu": (1, "idle")}
    assert decided.activity[0].busy_at is None


def test_plan__waiting_jobs__scale_up_to_what_they_need_within_max_workers() -> None:
    p = pool(desired=1, concurrency=2, job_types=["a", "b"])
    decided = plan([p], {"a": Demand(waiting=3), "b": Demand(waiting=1, running=1)}, T0, 64)
    assert sizes(decided.changes) == {"gpu": (3, "demand")}  # ceil(5 / 2)
    decided = plan([p], {"a": Demand(waiting=100)}, T0, 64)
    assert sizes(decided.changes) == {"gpu": (8, "demand")}


def test_plan__jobs_running_but_none_waiting__no_scale_up() -> None:
    p = pool(desired=1, concurrency=1)
    assert plan([p], {"inference_jobs": Demand(running=5)}, T0, MAX_TOTAL).changes == []


def test_plan__growth_only_within_the_total_cap__most_pressed_pool_first() -> None:
    a = pool(name="a", job_types=["a"], desired=2, concurrency=1, max_workers=10)
    b = pool(name="b", job_types=["b"], desired=2, concurrency=1, max_workers=10)
    demand = {"a": Demand(waiting=4), "b": Demand(waiting=20)}
    decided = plan([a, b], demand, T0, max_total=9)
    # 4 already wanted, 5 of headroom: all to b (20 waiting per 2 workers), none left for a.
    assert sizes(decided.changes) == {"b": (7, "demand")}


def test_plan__over_the_cap__trims_the_least_pressed_never_below_min_warm() -> None:
    quiet = pool(name="quiet", job_types=["q"], desired=6, min_warm=2)
    pressed = pool(name="pressed", job_types=["p"], desired=6, min_warm=1, max_workers=6)
    demand = {"q": Demand(running=1), "p": Demand(waiting=30)}
    decided = plan([quiet, pressed], demand, T0, max_total=6)
    assert sizes(decided.changes) == {"quiet": (2, "total_cap"), "pressed": (4, "total_cap")}
    assert decided.over_cap == 0
    decided = plan([quiet, pressed], demand, T0, max_total=2)
    assert sizes(decided.changes) == {"quiet": (2, "total_cap"), "pressed": (1, "total_cap")}
    assert decided.over_cap == 1


def test_plan__leaves_pools_that_are_not_active_alone() -> None:
    pools = [
        pool(name="draining", status=PoolStatus.DRAINING, desired=20),
        pool(name="stopped", status=PoolStatus.STOPPED, desired=20),
    ]
    decided = plan(pools, {"inference_jobs": Demand(waiting=50)}, T0, max_total=1)
    assert decided.changes == []
    assert [a.name for a in decided.activity] == ["draining", "stopped"]


# -- whole passes -------------------------------------------------------------------------------


@pytest.fixture
def policy(store: SqlStore, settings: Settings, clock: FakeClock) -> PoolPolicy:
    return PoolPolicy(store, settings, clock)


def create(store: SqlStore, clock: FakeClock, **overrides: Any) -> Pool:
    values: dict[str, Any] = {
        "name": "gpu",
        "job_types": ["inference_jobs"],
        "concurrency": 1,
        "desired": 1,
        "min_warm": 0,
        "max_workers": 4,
        "idle_timeout_s": 60.0,
    }
    return store.create_pool(PoolSpec(**{**values, **overrides}), clock.now(), max_total=MAX_TOTAL)


def register(store: SqlStore, clock: FakeClock, worker_id: str, pool: str | None = "gpu") -> None:
    registration = WorkerRegistration(worker_id, "node-a", pool, 1234, ["inference_jobs"], 1)
    store.register_worker(registration, clock.now())


def stale(clock: FakeClock, settings: Settings) -> datetime:
    return clock.now() - timedelta(seconds=settings.visibility_timeout_s)


def current(store: SqlStore, clock: FakeClock, settings: Settings, name: str = "gpu") -> Pool:
    found = store.get_pool(name, stale(clock, settings))
    assert found is not None
    return found


def test_run__waiting_jobs_scale_a_pool_up_and_mark_it_busy(
    store: SqlStore, clock: FakeClock, settings: Settings, policy: PoolPolicy, submit: Submitter
) -> None:
    create(store, clock)
    for _ in range(3):
        submit()
    submit(type="echo")
    report = policy.run()
    assert report.resized == {"gpu": 3}
    p = current(store, clock, settings)
    assert (p.desired, p.last_busy_at, p.updated_at) == (3, clock.now(), clock.now())


def test_run__delayed_jobs_do_not_count_as_waiting(
    store: SqlStore, clock: FakeClock, settings: Settings, policy: PoolPolicy, submit: Submitter
) -> None:
    create(store, clock)
    submit(delay_s=600)
    assert policy.run().resized == {}
    assert current(store, clock, settings).last_busy_at is None


def test_run__an_idle_pool_scales_down_to_min_warm_after_its_idle_timeout(
    store: SqlStore, clock: FakeClock, settings: Settings, policy: PoolPolicy, submit: Submitter
) -> None:
    create(store, clock, desired=3, min_warm=1)
    job = submit()
    claimed = claim(store, clock, job)
    clock.advance(120)
    assert policy.run().resized == {}  # running: busy
    store.complete_job(claimed, {"ok": True}, clock.now())
    clock.advance(59)
    assert policy.run().resized == {}
    clock.advance(1)
    assert policy.run().resized == {"gpu": 1}
    assert policy.run().resized == {}


def test_run__an_operator_scale_meanwhile_wins_over_the_planned_resize(
    store: SqlStore, clock: FakeClock, settings: Settings
) -> None:
    create(store, clock, desired=1)
    planned = PoolChange("gpu", expected_desired=1, desired=4, reason="demand")
    store.scale_pool("gpu", 2, clock.now(), stale(clock, settings), max_total=MAX_TOTAL)
    assert store.apply_pool_changes([planned], [], clock.now()) == []
    assert current(store, clock, settings).desired == 2


def test_run__two_leaders_overlapping__the_second_pass_changes_nothing(
    store: SqlStore, clock: FakeClock, settings: Settings, submit: Submitter
) -> None:
    create(store, clock)
    submit()
    submit()
    first, second = PoolPolicy(store, settings, clock), PoolPolicy(store, settings, clock)
    pools = store.list_pools(stale(clock, settings))
    demand = store.job_demand(clock.now())
    # Both planned from the same snapshot; only one resize lands.
    decided = [plan(pools, demand, clock.now(), MAX_TOTAL) for _ in (first, second)]
    assert store.apply_pool_changes(decided[0].changes, [], clock.now()) == ["gpu"]
    assert store.apply_pool_changes(decided[1].changes, [], clock.now()) == []
    assert second.run().resized == {}
    assert current(store, clock, settings).desired == 2


def test_run__workers_silent_for_a_visibility_timeout_are_lost(
    store: SqlStore, clock: FakeClock, settings: Settings, policy: PoolPolicy
) -> None:
    create(store, clock)
    register(store, clock, "w-silent")
    register(store, clock, "w-alive")
    clock.advance(settings.visibility_timeout_s)
    store.heartbeat_worker("w-alive", WorkerStatus.RUNNING, ["job-1"], clock.now())
    clock.advance(1)
    assert policy.run(judge_heartbeats=False).lost_workers == []
    assert policy.run().lost_workers == ["w-silent"]
    found = {w.id: w for w in store.list_workers()}
    assert found["w-silent"].status is WorkerStatus.LOST
    assert found["w-alive"].status is WorkerStatus.RUNNING
    assert found["w-alive"].current_jobs == ["job-1"]
    assert current(store, clock, settings).running == 1
    with store.engine.connect() as conn:
        column = conn.execute(sa.select(worker_pools.c.running)).scalar_one()
    assert column == 1  # the leader's bookkeeping


def test_run__a_lost_worker_that_heartbeats_again_is_live(
    store: SqlStore, clock: FakeClock, settings: Settings, policy: PoolPolicy
) -> None:
    create(store, clock)
    register(store, clock, "w-1")
    clock.advance(settings.visibility_timeout_s + 1)
    assert policy.run().lost_workers == ["w-1"]
    assert store.heartbeat_worker("w-1", WorkerStatus.RUNNING, [], clock.now())
    [worker] = store.list_workers()
    assert (worker.status, worker.stopped_at) == (WorkerStatus.RUNNING, None)
    assert current(store, clock, settings).running == 1


def test_run__a_draining_pool_stops_once_no_worker_is_live(
    store: SqlStore, clock: FakeClock, settings: Settings, policy: PoolPolicy
) -> None:
    create(store, clock)
    register(store, clock, "w-1")
    assert (
        store.drain_pool("gpu", clock.now(), stale(clock, settings)).status is PoolStatus.DRAINING
    )
    assert policy.run().stopped_pools == []
    store.stop_worker("w-1", clock.now())
    assert policy.run(judge_heartbeats=False).stopped_pools == []
    assert policy.run().stopped_pools == ["gpu"]
    assert current(store, clock, settings).status is PoolStatus.STOPPED


def test_run__prunes_workers_stopped_long_ago(
    store: SqlStore, clock: FakeClock, settings: Settings
) -> None:
    register(store, clock, "w-old", pool=None)
    store.stop_worker("w-old", clock.now())
    clock.advance(WORKER_RETENTION_S + 1)
    register(store, clock, "w-new", pool=None)
    store.stop_worker("w-new", clock.now())
    assert PoolPolicy(store, settings, clock).run().pruned_workers == 1
    assert [w.id for w in store.list_workers(include_stopped=True)] == ["w-new"]


# -- the store's pool rules -----------------------------------------------------------------------


def test_pools__the_store_refuses_what_the_bounds_or_the_cap_forbid(
    store: SqlStore, clock: FakeClock, settings: Settings
) -> None:
    before = stale(clock, settings)
    create(store, clock, name="a", desired=2, max_workers=4)
    with pytest.raises(PoolExists):
        create(store, clock, name="a")
    with pytest.raises(Conflict, match="pool_max_total_workers is 3"):
        store.scale_pool("a", 4, clock.now(), before, max_total=3)
    with pytest.raises(InvalidRequest, match="between min_warm"):
        store.scale_pool("a", 5, clock.now(), before, max_total=MAX_TOTAL)
    with pytest.raises(PoolNotFound):
        store.scale_pool("nope", 1, clock.now(), before, max_total=MAX_TOTAL)
    with pytest.raises(InvalidRequest, match="must not exceed"):
        store.update_pool_limits("a", PoolLimits(min_warm=5), clock.now(), before)
    assert store.scale_pool("a", 1, clock.now(), before, max_total=1).desired == 1  # down: fine
    lowered = store.update_pool_limits("a", PoolLimits(min_warm=3), clock.now(), before)
    assert (lowered.desired, lowered.min_warm) == (3, 3)


def test_pools__delete_only_a_stopped_pool_without_live_workers(
    store: SqlStore, clock: FakeClock, settings: Settings
) -> None:
    before = stale(clock, settings)
    create(store, clock)
    register(store, clock, "w-1")
    with pytest.raises(Conflict, match="stop or drain it first"):
        store.delete_pool("gpu", before)
    store.stop_pool("gpu", clock.now(), before)
    with pytest.raises(Conflict, match="live worker"):
        store.delete_pool("gpu", before)
    store.stop_worker("w-1", clock.now())
    store.delete_pool("gpu", before)
    assert store.get_pool("gpu", before) is None


def test_pools__resume_checks_the_cap_and_keeps_the_desired_size(
    store: SqlStore, clock: FakeClock, settings: Settings
) -> None:
    before = stale(clock, settings)
    create(store, clock, name="a", desired=3)
    store.stop_pool("a", clock.now(), before)
    create(store, clock, name="b", desired=2)
    with pytest.raises(Conflict):
        store.resume_pool("a", clock.now(), before, max_total=4)
    resumed = store.resume_pool("a", clock.now(), before, max_total=5)
    assert (resumed.status, resumed.desired) == (PoolStatus.ACTIVE, 3)


def test_pools__list_for_a_node_includes_the_pools_of_no_node(
    store: SqlStore, clock: FakeClock, settings: Settings
) -> None:
    create(store, clock, name="anywhere")
    create(store, clock, name="here", node="node-a")
    create(store, clock, name="there", node="node-b")
    names = [p.name for p in store.list_pools(stale(clock, settings), node="node-a")]
    assert names == ["anywhere", "here"]


def test_pools__idle_since_is_the_later_of_busy_and_changed() -> None:
    p = pool(last_busy_at=T0 + timedelta(seconds=5), updated_at=T0 + timedelta(seconds=3))
    assert p.idle_since() == T0 + timedelta(seconds=5)
    assert replace(p, last_busy_at=None).idle_since() == T0 + timedelta(seconds=3)
