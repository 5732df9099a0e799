"""The worker's read loop claims for every slot it fills in one transaction, and with most
slots busy it lingers a moment so that one claim serves several (workers/runtime.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from orchestrator.errors import StoreUnavailable
from orchestrator.store import SqlStore
from tests.integration.harness import System, wait_until


def _record_claim_groups(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    sizes: list[int] = []
    claim_jobs = SqlStore.claim_jobs

    def recording(self: SqlStore, dispatches: Any, *args: Any) -> Any:
        sizes.append(len(dispatches))
        return claim_jobs(self, dispatches, *args)

    monkeypatch.setattr(SqlStore, "claim_jobs", recording)
    return sizes


def _at(job: dict[str, Any], field: str) -> datetime:
    return datetime.fromisoformat(job[field])


def test_claims__the_jobs_one_read_hands_out_share_one_transaction(
    system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes = _record_claim_groups(monkeypatch)
    ids = [
        j["job_id"]
        for j in system.client.post(
            "/jobs/submit_batch", json={"jobs": [{"type": "record"}] * 8}
        ).json()["jobs"]
    ]
    system.start_worker(concurrency=8)
    for job_id in ids:
        assert system.wait_status(job_id)["status"] == "done"
    assert sizes[0] == 8, sizes  # one claim for all eight, not one per slot
    assert sorted(system.recorder.order()) == sorted(ids)


def test_linger__a_freed_slot_waits_for_more_while_most_are_busy(system: System) -> None:
    settings = system.settings.model_copy(update={"claim_linger_ms": 400})
    jobs = [{"type": "block"}] * 3 + [{"type": "record"}] * 2
    ids = [
        j["job_id"]
        for j in system.client.post("/jobs/submit_batch", json={"jobs": jobs}).json()["jobs"]
    ]
    system.start_worker(concurrency=4, settings=settings)
    first, second = ids[3], ids[4]
    try:
        done = system.wait_status(second)
        # Three of four slots stay busy: after the first record job freed its slot, the
        # loop waited for more to come free (none did) before claiming the second.
        assert (
            _at(done, "started_at") - _at(system.job(first), "finished_at")
        ).total_seconds() >= 0.3
    finally:
        system.recorder.release.set()
    for job_id in ids[:3]:
        assert system.wait_status(job_id)["status"] == "done"


def test_linger__an_idle_worker_starts_a_job_at_once(system: System) -> None:
    settings = system.settings.model_copy(update={"claim_linger_ms": 5000})
    system.start_worker(concurrency=4, settings=settings)
    job_id = system.submit(type="record")
    job = system.wait_status(job_id, timeout=4.0)  # no 5 s linger with every slot free
    assert job["status"] == "done"


def test_claims__database_down_for_a_claim__messages_put_back_and_slots_freed(
    system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    claim_jobs = SqlStore.claim_jobs
    failed: list[int] = []

    def down_once(self: SqlStore, dispatches: Any, *args: Any) -> Any:
        if not failed:
            failed.append(len(dispatches))
            raise StoreUnavailable("database error: gone for a moment")
        return claim_jobs(self, dispatches, *args)

    monkeypatch.setattr(SqlStore, "claim_jobs", down_once)
    ids = [system.submit(type="record") for _ in range(3)]
    worker = system.start_worker(concurrency=4)
    for job_id in ids:
        assert system.wait_status(job_id)["status"] == "done"
    assert failed  # the first claim did fail, and its messages came back
    assert system.recorder.order().count(ids[0]) == 1
    wait_until(lambda: worker._idle == 4, 5, "every slot to be free again")


def test_claims__one_job_whose_claim_fails__the_others_still_run(
    system: System, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    ids = [
        j["job_id"]
        for j in system.client.post(
            "/jobs/submit_batch", json={"jobs": [{"type": "record"}] * 4}
        ).json()["jobs"]
    ]
    bad = ids[1]
    claim_job = SqlStore.claim_job

    def group_fails(self: SqlStore, dispatches: Any, *args: Any) -> Any:
        raise RuntimeError("a bad row in the group")

    def one_fails(self: SqlStore, dispatch: Any, *args: Any) -> Any:
        if dispatch.job_id == bad:
            raise RuntimeError("this job's row is bad")
        return claim_job(self, dispatch, *args)

    monkeypatch.setattr(SqlStore, "claim_jobs", group_fails)
    monkeypatch.setattr(SqlStore, "claim_job", one_fails)
    worker = system.start_worker(concurrency=4)
    for job_id in ids:
        if job_id != bad:
            assert system.wait_status(job_id)["status"] == "done"
    wait_until(lambda: worker._idle == 4, 5, "every slot to be free again")
    assert system.job(bad)["status"] == "pending"  # left for redelivery or the reclaimer
    assert bad not in system.recorder.order()
    assert any(
        getattr(r, "job_id", None) == bad and getattr(r, "event", None) == "slot_error"
        for r in caplog.records
    )
