"""Leader election, the reclaimer, the relay and the dead-letter queue, in one process."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
import sqlalchemy as sa

from orchestrator.store.election import LockElection, create_election
from orchestrator.testing import FakeElection
from tests.integration.backends import Backend
from tests.integration.harness import System, wait_until
from workers.context import JobContext

# -- leader election -------------------------------------------------------------------------


def test_election__one_leader_and_a_higher_epoch_after_handover(system: System) -> None:
    engine = system.store.engine
    lock = system.settings.leader_lock
    a = create_election(engine, "replica-a", ttl_s=5, lock_name=lock)
    b = create_election(engine, "replica-b", ttl_s=5, lock_name=lock)
    system.services.engine.stop()  # the System's own engine would compete
    now = system.services.clock.now()
    assert a.check(now) is True
    assert b.check(now) is False
    first = a.current()
    assert (first.leader_id, a.leading, b.leading) == ("replica-a", True, False)
    a.resign(now)
    assert b.check(system.services.clock.now()) is True
    second = b.current()
    assert second.leader_id == "replica-b"
    assert second.epoch > first.epoch
    assert a.check(system.services.clock.now()) is False
    b.resign(system.services.clock.now())


def test_election__sqlite_lease_expires_and_the_old_leader_notices(backend: Backend) -> None:
    if backend.name != "sqlite":
        pytest.skip("the lease is SQLite's; MariaDB uses GET_LOCK (next test)")
    system = System(backend, run_engine=False)
    try:
        a = create_election(system.store.engine, "replica-a", ttl_s=0.2)
        b = create_election(system.store.engine, "replica-b", ttl_s=0.2)
        now = system.services.clock.now()
        assert a.check(now)
        assert not b.check(now)
        later = now + timedelta(seconds=0.3)  # a stalled past its lease
        assert b.check(later)
        assert not a.check(later)  # its renewal fails: it knows it lost
    finally:
        system.close()


def test_election__mariadb_lost_lock_connection_loses_leadership_at_once(backend: Backend) -> None:
    if backend.name != "mariadb":
        pytest.skip("GET_LOCK is MariaDB's; SQLite uses a lease (previous test)")
    system = System(backend, run_engine=False)
    try:
        lock = system.settings.leader_lock
        a = create_election(system.store.engine, "replica-a", ttl_s=5, lock_name=lock)
        b = create_election(system.store.engine, "replica-b", ttl_s=5, lock_name=lock)
        now = system.services.clock.now()
        assert a.check(now) and not b.check(now)
        assert isinstance(a, LockElection) and a._conn is not None
        connection_id = a._conn.execute(sa.text("SELECT CONNECTION_ID()")).scalar()
        with system.store.engine.connect() as admin:
            admin.execute(sa.text(f"KILL {int(connection_id)}"))
        assert a.check(system.services.clock.now()) is False
        assert b.check(system.services.clock.now()) is True
        b.resign(system.services.clock.now())
    finally:
        system.close()


def test_leader_endpoint(system: System) -> None:
    wait_until(lambda: system.services.engine.leading, 5, "the engine to lead")
    body = system.client.get("/leader").json()
    assert body["is_leader"] is True
    assert body["leader_id"] == body["instance_id"]
    assert body["epoch"] >= 1 and body["since"]
    assert body["expires_at"] > body["since"]


# -- the reclaimer: stale attempts -------------------------------------------------------------


@pytest.fixture
def fast(backend_factory: object) -> System:  # type: ignore[misc]
    system = System(
        backend_factory(visibility_timeout_s=0.3, heartbeat_interval_s=0.1, relay_grace_s=0.2)
    )  # type: ignore[operator]
    system.services.engine.stop()  # the tests call the reclaimer themselves
    yield system
    system.close()


def _claim_and_abandon(system: System, job_id: str) -> None:
    """What a worker killed mid-handler leaves behind: a running attempt, no heartbeat."""
    from orchestrator.jobs import Dispatch, Priority

    claim = system.store.claim_job(
        Dispatch(job_id, "record", Priority.NORMAL, 1), "dead-worker", system.services.clock.now()
    )
    assert claim is not None


def test_reclaim__stale_attempt_is_requeued_and_finishes(fast: System) -> None:
    job_id = fast.submit(type="record")
    _claim_and_abandon(fast, job_id)
    time.sleep(0.4)  # past the visibility timeout
    report = fast.client.post("/control/reclaim").json()
    assert report["requeued"] >= 1
    job = fast.job(job_id)
    assert (job["status"], job["attempts"]) == ("pending", 1)
    assert "worker lost" in job["error"]
    assert fast.events(job_id)[-1] == "reclaimed"
    fast.start_worker()
    job = fast.wait_status(job_id)
    assert (job["status"], job["attempts"]) == ("done", 2)
    assert fast.recorder.count(job_id) == 1


def test_reclaim__last_attempt_is_dead_lettered_with_a_dlq_copy(fast: System) -> None:
    job_id = fast.submit(type="record", max_attempts=1)
    _claim_and_abandon(fast, job_id)
    time.sleep(0.4)
    report = fast.client.post("/control/reclaim").json()
    assert report["dead_lettered"] == 1
    assert fast.job(job_id)["status"] == "dead_letter"
    entries = fast.backend.make_redis().xrange(fast.backend.keys.dlq("record"))
    assert [e[1]["job_id"] for e in entries] == [job_id]


@pytest.fixture
def roomy(backend_factory: object) -> System:  # type: ignore[misc]
    """Live workers heartbeat every 0.1 s against a 1 s visibility timeout: room for a
    loaded CI machine to stall a thread without a false reclaim."""
    system = System(backend_factory(visibility_timeout_s=1.0, heartbeat_interval_s=0.1))  # type: ignore[operator]
    system.services.engine.stop()
    yield system
    system.close()


def test_reclaim__long_job_that_heartbeats_is_never_reclaimed(roomy: System) -> None:
    fast = roomy
    fast.start_worker()
    job_id = fast.submit(type="block")
    fast.wait_status(job_id, "running")
    for _ in range(4):  # 4 passes over > 3 visibility timeouts
        time.sleep(0.8)
        assert fast.client.post("/control/reclaim").json()["requeued"] == 0
    fast.recorder.release.set()
    job = fast.wait_status(job_id)
    assert (job["status"], job["attempts"]) == ("done", 1)
    assert fast.recorder.count(job_id) == 1


# -- the reclaimer: Redis's pending lists, and lost messages ----------------------------------


def test_reclaim__message_held_by_a_dead_consumer_is_delivered_again(fast: System) -> None:
    job_id = fast.submit(type="record")
    fast.services.streams.ensure_groups(["record"])
    held = fast.services.streams.read("dead-consumer", ["record"], 10, 0)
    assert [d.dispatch.job_id for d in held] == [job_id]
    fast.start_worker()
    time.sleep(0.4)  # the live worker sees nothing: the message is pending elsewhere
    assert fast.job(job_id)["status"] == "pending"
    report = fast.client.post("/control/reclaim").json()
    assert report["requeued"] == 1
    assert fast.wait_status(job_id)["status"] == "done"
    assert fast.recorder.count(job_id) == 1


def test_relay__lost_message_is_republished_once(fast: System) -> None:
    job_id = fast.submit(type="record")
    client = fast.backend.make_redis()
    stream = fast.backend.keys.stream("record")
    [(entry_id, _)] = client.xrange(stream)
    client.xdel(stream, entry_id)  # lost, as with a Redis restart without persistence
    time.sleep(0.3)  # past the relay's grace
    assert fast.client.post("/control/reclaim").json()["republished"] == 1
    assert fast.client.post("/control/reclaim").json()["republished"] == 0
    assert fast.stream_len("record") == 1
    fast.start_worker()
    assert fast.wait_status(job_id)["status"] == "done"


def test_relay__healthy_backlog_is_not_republished(fast: System) -> None:
    fast.client.post("/jobs/submit_batch", json={"jobs": [{"type": "record"}] * 300})
    time.sleep(0.3)
    report = fast.client.post("/control/reclaim").json()
    assert report["republished"] == 0
    assert fast.stream_len("record") == 300


def test_reclaim__safe_while_another_replica_reclaims(fast: System) -> None:
    ids = [fast.submit(type="record") for _ in range(20)]
    for job_id in ids:
        _claim_and_abandon(fast, job_id)
    time.sleep(0.4)
    other = System(fast.backend, run_engine=False)
    try:
        reports = [fast.services.reclaimer.reclaim(), other.services.reclaimer.reclaim()]
    finally:
        other.close()
    assert sum(r.requeued for r in reports) == 20
    fast.start_worker()
    for job_id in ids:
        assert fast.wait_status(job_id)["status"] == "done"
        assert fast.recorder.count(job_id) == 1


# -- the dead-letter queue ------------------------------------------------------------------


def test_dlq__list_and_replay_with_a_fresh_budget(system: System) -> None:
    registry = system.recorder.registry()

    def flaky(ctx: JobContext) -> str:
        if not system.recorder.release.is_set():
            raise RuntimeError("not yet")
        return "ok"

    registry.register("flaky", flaky)
    system.start_worker(registry=registry)
    job_id = system.submit(type="flaky", max_attempts=2)
    assert system.wait_status(job_id)["status"] == "dead_letter"
    page = system.client.get("/dlq", params={"type": "flaky"}).json()
    assert [j["id"] for j in page["jobs"]] == [job_id]
    assert "not yet" in page["jobs"][0]["error"]
    system.recorder.release.set()
    replayed = system.client.post(f"/dlq/{job_id}/replay")
    assert replayed.status_code == 200
    assert (replayed.json()["status"], replayed.json()["attempts"]) == ("pending", 0)
    job = system.wait_status(job_id)
    assert (job["status"], job["result"], job["attempts"]) == ("done", "ok", 1)
    assert "replayed" in system.events(job_id)
    assert system.client.get("/dlq", params={"type": "flaky"}).json()["jobs"] == []


def test_dlq__replay_of_a_live_or_unknown_job_is_refused(system: System) -> None:
    job_id = system.submit(type="echo")
    before = system.snapshot()
    conflict = system.client.post(f"/dlq/{job_id}/replay")
    assert conflict.status_code == 409 and conflict.json()["error"] == "conflict"
    missing = system.client.post("/dlq/01a2081d-9d5a-70e5-b9fb-d1caae1f9b91/replay")
    assert missing.status_code == 404
    assert system.snapshot() == before


def test_fake_election_can_be_swapped_in(backend: Backend) -> None:
    from orchestrator.wiring import build_services

    store = backend.store()
    services = build_services(
        backend.settings,
        store=store,
        streams=backend.streams(),
        election=FakeElection(leading=False),
    )
    try:
        services.engine.step()
        assert services.engine.leading is False
    finally:
        services.close()


def test_hygiene__dead_consumer_removed_only_after_its_entries_were_claimed(
    backend_factory: object,
) -> None:
    system = System(
        backend_factory(visibility_timeout_s=0.3, heartbeat_interval_s=0.1, consumer_idle_s=0.1)
    )  # type: ignore[operator]
    system.services.engine.stop()
    try:
        job_id = system.submit(type="record")
        streams = system.services.streams
        streams.ensure_groups(["record"])
        assert streams.read("dead-consumer", ["record"], 10, 0)
        client = system.backend.make_redis()
        stream, group = system.backend.keys.stream("record"), system.backend.keys.group("record")

        def consumers() -> dict[str, int]:
            return {c["name"]: c["pending"] for c in client.xinfo_consumers(stream, group)}

        time.sleep(0.15)  # idle, but still holding an entry
        streams.prune_consumers("record", 100)  # may remove it from the empty band streams
        assert consumers() == {"dead-consumer": 1}
        time.sleep(0.2)  # now past the visibility timeout too
        system.services.reclaimer.reclaim()  # claims the entry, then prunes the consumer
        assert "dead-consumer" not in consumers()
        system.start_worker()
        assert system.wait_status(job_id)["status"] == "done"
        assert client.xlen(stream) == 0  # acked entries are deleted
    finally:
        system.close()


def test_engine__new_leadership_waits_a_visibility_timeout_before_judging_heartbeats(
    fast: System,
) -> None:
    from orchestrator.engine import Engine

    job_id = fast.submit(type="record")
    _claim_and_abandon(fast, job_id)
    time.sleep(0.4)  # stale by now, but a new leader cannot tell a dead worker from an outage
    s = fast.services
    engine = Engine(s.store, s.streams, s.settings, s.clock, FakeElection(), s.reclaimer)
    engine.step()
    assert fast.job(job_id)["status"] == "running"
    time.sleep(0.35)  # the leadership has now lasted a visibility timeout
    engine._next_reclaim = 0.0
    engine.step()
    assert fast.job(job_id)["status"] == "pending"


def test_relay__pages_past_a_backlog_larger_than_one_batch(backend_factory: object) -> None:
    system = System(backend_factory(relay_grace_s=0.1, relay_batch=5))  # type: ignore[operator]
    system.services.engine.stop()
    try:
        system.client.post("/jobs/submit_batch", json={"jobs": [{"type": "other"}] * 12})
        time.sleep(0.02)
        lost = system.submit(type="record")
        client = system.backend.make_redis()
        stream = system.backend.keys.stream("record")
        [(entry_id, _)] = client.xrange(stream)
        client.xdel(stream, entry_id)
        time.sleep(0.2)
        republished = 0
        for _ in range(4):  # 13 waiting jobs, 5 a pass: the cursor reaches the lost one
            republished += system.services.reclaimer.reclaim().republished
        assert republished == 1
        assert [f["job_id"] for _, f in client.xrange(stream)] == [lost]
    finally:
        system.close()


def test_reclaim__leaves_messages_a_busy_live_worker_has_read_ahead(roomy: System) -> None:
    fast = roomy
    blocker = fast.submit(type="block")
    waiting = fast.submit(type="record")
    fast.start_worker(concurrency=1)  # reads both; runs one
    fast.wait_status(blocker, "running")
    for _ in range(3):  # 2.4 s: over twice the visibility timeout
        time.sleep(0.8)
        assert fast.client.post("/control/reclaim").json()["requeued"] == 0
    assert fast.job(waiting)["status"] == "pending"
    fast.recorder.release.set()
    assert fast.wait_status(waiting)["status"] == "done"
    assert fast.recorder.count(waiting) == 1
    assert fast.stream_len("record") == 0
