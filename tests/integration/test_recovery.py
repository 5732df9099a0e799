"""Redis losing its data: the database is the truth, and every waiting job still finishes."""

from __future__ import annotations

from orchestrator.engine import Engine
from orchestrator.testing import FakeElection
from tests.integration.harness import System, wait_until


def _wipe_redis(system: System) -> None:
    """What a Redis restart without persistence does to our keys (on the shared real Redis,
    only our test prefix is wiped)."""
    client = system.backend.make_redis()
    keys = list(client.scan_iter(f"{system.settings.redis_prefix}*"))
    assert keys
    client.delete(*keys)


def _fresh_engine(system: System) -> Engine:
    s = system.services
    return Engine(s.store, s.streams, s.settings, s.clock, FakeElection(), s.reclaimer)


def test_redis_lost_data__restarted_engine_republishes_and_all_finish(system: System) -> None:
    system.services.engine.stop()
    before = [system.submit(type="record", payload={"i": i}) for i in range(20)]
    _fresh_engine(system).tick()  # an engine saw this Redis: its epoch is remembered
    _wipe_redis(system)
    # A submit reaches the empty Redis first and stamps a new epoch there ...
    after = system.submit(type="record", payload="after")
    assert system.stream_len("record") == 1
    # ... then a freshly started engine must still see that the data was lost.
    _fresh_engine(system).tick()
    client = system.backend.make_redis()
    stream = system.backend.keys.stream("record")
    # "after" may be there twice (it was waiting too); its duplicate fails its claim.
    assert {fields["job_id"] for _, fields in client.xrange(stream)} == {*before, after}
    system.start_worker(concurrency=4)
    for job_id in [*before, after]:
        assert system.wait_status(job_id)["status"] == "done"
        assert system.recorder.count(job_id) == 1


def test_redis_lost_data__running_engine_notices(system: System) -> None:
    ids = [system.submit(type="record") for _ in range(5)]
    wait_until(lambda: system.services.store.get_state("redis_epoch"), 5, "the first tick")
    _wipe_redis(system)
    wait_until(lambda: system.stream_len("record") == 5, 5, "the jobs to be republished")
    system.start_worker()
    for job_id in ids:
        assert system.wait_status(job_id)["status"] == "done"


def test_engine_restart__healthy_backlog_is_not_republished(system: System) -> None:
    system.services.engine.stop()
    system.client.post("/jobs/submit_batch", json={"jobs": [{"type": "record"}] * 50})
    _fresh_engine(system).tick()
    _fresh_engine(system).tick()
    assert system.stream_len("record") == 50
