"""The node supervisor's reconcile pass, with fake processes, a fake clock and SQLite."""

from __future__ import annotations

import itertools
import signal
from datetime import timedelta
from typing import Any

import pytest

from orchestrator.clock import FakeClock
from orchestrator.fleet import PoolSpec, PoolStatus, WorkerRegistration, WorkerStatus
from orchestrator.settings import Settings
from orchestrator.store import SqlStore
from workers.supervisor import NodeSupervisor

NODE = "node-a"
_pids = itertools.count(1000)


class FakeProc:
    """A worker process that exits when told to (or when the test says it crashed)."""

    def __init__(self, command: list[str]) -> None:
        self.command = command
        self.pid = next(_pids)
        self.returncode: int | None = None
        self.signals: list[int] = []

    def poll(self) -> int | None:
        return self.returncode

    def send_signal(self, signum: int) -> None:
        self.signals.append(signum)

    def kill(self) -> None:
        self.returncode = -9

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self.returncode = 0  # a fake worker stops at once when waited for
        return self.returncode


class Harness:
    def __init__(self, store: SqlStore, settings: Settings, clock: FakeClock) -> None:
        self.store = store
        self.clock = clock
        self.settings = settings
        self.now = 0.0
        self.spawned: list[FakeProc] = []
        self.supervisor = NodeSupervisor(
            store,
            settings,
            node=NODE,
            worker_args=["--import", "my_handlers"],
            env={},
            clock=clock,
            spawn=self._spawn,
            monotonic=lambda: self.now,
        )

    def _spawn(self, command: list[str], env: dict[str, str]) -> Any:
        assert env["ORCH_NODE_NAME"] == NODE
        proc = FakeProc(command)
        self.spawned.append(proc)
        return proc

    def live(self, pool: str = "gpu") -> list[FakeProc]:
        return [
            c.proc  # type: ignore[misc]
            for c in self.supervisor.children
            if c.pool == pool and c.signals == 0 and c.proc.poll() is None
        ]

    def stale_before(self) -> Any:
        return self.clock.now() - timedelta(seconds=self.settings.visibility_timeout_s)


@pytest.fixture
def h(store: SqlStore, settings: Settings, clock: FakeClock) -> Harness:
    return Harness(store, settings, clock)


def create(h: Harness, name: str = "gpu", node: str | None = NODE, desired: int = 2) -> None:
    spec = PoolSpec(name, ["inference_jobs"], 1, desired, 0, 4, 60.0, node=node)
    h.store.create_pool(spec, h.clock.now(), max_total=64)


def test_reconcile__starts_desired_workers_of_its_pools_only(h: Harness) -> None:
    create(h)
    create(h, "anywhere", node=None, desired=1)
    create(h, "elsewhere", node="node-b", desired=3)
    h.supervisor.reconcile()
    assert len(h.live()) == 2 and len(h.live("anywhere")) == 1 and h.live("elsewhere") == []
    assert h.live()[0].command[-5:] == ["worker", "--pool", "gpu", "--import", "my_handlers"]
    h.supervisor.reconcile()
    assert len(h.spawned) == 3  # nothing more to start


def test_reconcile__scale_down_stops_the_idlest_workers(h: Harness) -> None:
    create(h, desired=3)
    h.supervisor.reconcile()
    busy, idle, also_busy = h.spawned
    for proc, jobs in ((busy, ["j1"]), (idle, []), (also_busy, ["j2", "j3"])):
        worker = WorkerRegistration(f"w-{proc.pid}", NODE, "gpu", proc.pid, ["x"], 1)
        h.store.register_worker(worker, h.clock.now())
        h.store.heartbeat_worker(worker.id, WorkerStatus.RUNNING, jobs, h.clock.now())
    h.store.scale_pool("gpu", 1, h.clock.now(), h.stale_before(), max_total=64)
    h.supervisor.reconcile()
    assert idle.signals == [signal.SIGTERM] and busy.signals == [signal.SIGTERM]
    assert also_busy.signals == []


def test_reconcile__a_crashed_worker_is_restarted_after_a_growing_delay(h: Harness) -> None:
    create(h, desired=1)
    h.supervisor.reconcile()
    for delay in (1.0, 2.0, 4.0):
        h.spawned[-1].returncode = 1
        h.now += 0.5
        h.supervisor.reconcile()
        assert h.live() == []
        h.now += delay - 0.01
        h.supervisor.reconcile()
        assert h.live() == [], delay
        h.now += 0.02
        h.supervisor.reconcile()
        assert len(h.live()) == 1
    h.now += 60  # it ran a while: the delay starts over
    h.spawned[-1].returncode = 1
    h.supervisor.reconcile()
    h.now += 1.0
    h.supervisor.reconcile()
    assert len(h.live()) == 1


def test_reconcile__drain_signals_once_then_stops_the_pool(h: Harness) -> None:
    create(h)
    h.supervisor.reconcile()
    h.store.drain_pool("gpu", h.clock.now(), h.stale_before())  # no live rows: stopped at once
    h.store.resume_pool("gpu", h.clock.now(), h.stale_before(), max_total=64)
    worker = WorkerRegistration("w-1", NODE, "gpu", h.spawned[0].pid, ["x"], 1)
    h.store.register_worker(worker, h.clock.now())
    assert h.store.drain_pool("gpu", h.clock.now(), h.stale_before()).status is (
        PoolStatus.DRAINING
    )
    for _ in range(3):
        h.now += 1
        h.supervisor.reconcile()
    assert [p.signals for p in h.spawned] == [[signal.SIGTERM]] * 2
    for proc in h.spawned:
        proc.returncode = 0
    h.store.stop_worker("w-1", h.clock.now())
    h.supervisor.reconcile()
    assert h.supervisor.children == []
    pool = h.store.get_pool("gpu", h.stale_before())
    assert pool is not None and pool.status is PoolStatus.STOPPED


def test_reconcile__stop_signals_twice_and_kills_past_the_deadline(h: Harness) -> None:
    create(h, desired=1)
    h.supervisor.reconcile()
    h.store.stop_pool("gpu", h.clock.now(), h.stale_before())
    h.supervisor.reconcile()
    h.now += 0.6
    h.supervisor.reconcile()
    [proc] = h.spawned
    assert proc.signals == [signal.SIGTERM, signal.SIGTERM]
    h.now += h.settings.shutdown_grace_s + 66
    h.supervisor.reconcile()
    assert proc.returncode == -9
    h.supervisor.reconcile()
    assert h.supervisor.children == []


def test_reconcile__a_deleted_pool_loses_its_workers(h: Harness) -> None:
    create(h, desired=1)
    h.supervisor.reconcile()
    h.store.stop_pool("gpu", h.clock.now(), h.stale_before())
    h.store.delete_pool("gpu", h.stale_before())
    h.supervisor.reconcile()
    assert h.spawned[0].signals == [signal.SIGTERM]


def test_shutdown__stops_every_worker(h: Harness) -> None:
    create(h)
    h.supervisor.reconcile()
    h.supervisor.stop()
    h.supervisor.run()  # stopped already: straight to the shutdown
    assert [p.signals for p in h.spawned] == [[signal.SIGTERM]] * 2
    assert all(p.returncode == 0 for p in h.spawned) and h.supervisor.children == []
