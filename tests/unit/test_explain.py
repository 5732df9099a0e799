"""`explain`: the right reason for each way a job can wait, from fakes and a fixed time."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from orchestrator.admission import Limits
from orchestrator.explain import ExplainInputs, Explanation, explain
from orchestrator.gpu import Device
from orchestrator.jobs import GpuNeeds, Job, JobStatus, Priority
from orchestrator.leases import AdmissionPolicy, Lease, LeaseStatus, Quota
from orchestrator.models import ModelPlacement
from orchestrator.store.insight_base import QueuePlace

NOW = datetime(2026, 1, 1, 12, 0, 0)


def job(**changes: Any) -> Job:
    base = Job(
        id="job-1",
        type="render",
        status=JobStatus.PENDING,
        priority=Priority.NORMAL,
        payload={},
        attempts=0,
        max_attempts=3,
        timeout_s=60.0,
        owner="alice",
        idempotency_key=None,
        created_at=NOW - timedelta(seconds=30),
        updated_at=NOW,
        available_at=NOW - timedelta(seconds=30),
    )
    return replace(base, **changes)


def device(index: int = 0, total: int = 24000, **changes: Any) -> Device:
    base = Device(
        node="n1",
        index=index,
        name="sim",
        memory_total_mb=total,
        memory_used_mb=0,
        source="simulated",
        health="ok",
        reported_at=NOW,
    )
    return replace(base, **changes)


def lease(token: str, **changes: Any) -> Lease:
    base = Lease(
        token=token,
        agent="bob",
        owner="bob",
        status=LeaseStatus.ACTIVE,
        est_vram_mb=20000,
        gpu_count=1,
        priority=Priority.NORMAL,
        ttl_s=60.0,
        queued_at=NOW - timedelta(seconds=60),
        created_at=NOW - timedelta(seconds=60),
        node="n1",
        devices=(0,),
        granted_at=NOW - timedelta(seconds=60),
        expires_at=NOW + timedelta(seconds=30),
    )
    return replace(base, **changes)


def inputs(the_job: Job, **changes: Any) -> ExplainInputs:
    base = ExplainInputs(
        job=the_job,
        now=NOW,
        place=QueuePlace(published=True),
        live_workers=1,
        limits=Limits(headroom_mb=0, stale_s=30.0),
    )
    return replace(base, **changes)


def codes(answer: Explanation) -> list[str]:
    return [r["code"] for r in answer.as_dict()["reasons"]]


def reason(answer: Explanation, code: str) -> dict[str, Any]:
    found: dict[str, Any] = next(r for r in answer.as_dict()["reasons"] if r["code"] == code)
    return found


GPU = GpuNeeds(est_vram_mb=16000)


def test_explain__queue_position_counts_ahead_by_band() -> None:
    place = QueuePlace(published=True, ahead={Priority.HIGH: 2, Priority.NORMAL: 3})
    answer = explain(inputs(job(), place=place))
    assert answer.runnable
    ahead = reason(answer, "queue_position")
    assert ahead["ahead"] == 5
    assert ahead["ahead_by_band"] == {"critical": 0, "high": 2, "normal": 3}
    assert "5 job(s)" in answer.summary


def test_explain__due_but_unpublished() -> None:
    answer = explain(inputs(job(), place=QueuePlace(published=False)))
    assert codes(answer) == ["unpublished"]
    assert answer.runnable


def test_explain__delayed_until_run_at() -> None:
    later = NOW + timedelta(minutes=5)
    answer = explain(inputs(job(available_at=later)))
    assert not answer.runnable
    delayed = reason(answer, "delayed")
    assert delayed["until"] == "2026-01-01T12:05:00+00:00"
    assert delayed["wait_s"] == 300.0
    assert "queue_position" not in codes(answer)  # not in the queue before it is due


def test_explain__retry_backoff_of_a_failed_attempt() -> None:
    failed = job(
        status=JobStatus.FAILED,
        attempts=1,
        error="boom",
        available_at=NOW + timedelta(seconds=8),
    )
    answer = explain(inputs(failed))
    backoff = reason(answer, "retry_backoff")
    assert backoff["blocking"] and backoff["attempts"] == 1
    assert "boom" in backoff["message"]


def test_explain__no_live_worker_for_its_type() -> None:
    answer = explain(inputs(job(), live_workers=0))
    assert not answer.runnable
    assert "no live worker serves job type render" in answer.summary


def test_explain__safe_mode_blocks_a_gpu_job() -> None:
    answer = explain(inputs(job(gpu=GPU), safe_mode=True, devices=[device()]))
    assert "safe_mode" in codes(answer)
    assert not answer.runnable


def test_explain__safe_mode_does_not_block_a_cpu_job() -> None:
    assert explain(inputs(job(), safe_mode=True)).runnable


def test_explain__waiting_lease_and_the_leases_holding_the_capacity() -> None:
    holder = lease("holder-token-1")
    claimed = job(gpu=GPU, status=JobStatus.CLAIMED, worker_id="w1", attempts=1)
    mine = lease(
        "mine-token-xx",
        status=LeaseStatus.WAITING,
        owner="alice",
        agent="alice",
        est_vram_mb=16000,
        devices=(),
        job_id="job-1",
        granted_at=None,
        expires_at=None,
        queued_at=claimed.created_at,
    )
    earlier = replace(mine, token="earlier-xxxxx", queued_at=NOW - timedelta(minutes=5))
    answer = explain(
        inputs(
            claimed,
            devices=[device()],
            active=[holder],
            waiting=[earlier, mine],
            leases=[mine],
        )
    )
    assert codes(answer)[0] == "claimed"
    waiting = reason(answer, "lease_waiting")
    assert waiting["lease"] == "mine-token-xx" and waiting["ahead"] == 1
    capacity = reason(answer, "gpu_capacity")
    assert [h["token"] for h in capacity["holders"]] == ["holder-token-1"]
    assert capacity["holders_total"] == 1
    assert "holder-t" in capacity["message"]


def test_explain__gpu_free_now() -> None:
    answer = explain(inputs(job(gpu=GPU), devices=[device()]))
    assert "gpu_available" in codes(answer)
    assert answer.runnable


def test_explain__lease_over_capacity_can_never_fit() -> None:
    huge = job(gpu=GpuNeeds(est_vram_mb=80000))
    answer = explain(inputs(huge, devices=[device(total=24000)]))
    over = reason(answer, "exceeds_capacity")
    assert over["blocking"] and over["est_vram_mb"] == 80000
    assert not answer.runnable


def test_explain__agent_quota_hit() -> None:
    policy = AdmissionPolicy(quotas={"alice": Quota(max_leases=1)})
    held = lease("alice-lease-1", owner="alice", agent="alice", est_vram_mb=1000)
    answer = explain(
        inputs(
            job(gpu=GpuNeeds(est_vram_mb=1000)), devices=[device()], active=[held], policy=policy
        )
    )
    quota = reason(answer, "quota")
    assert quota["limit"] == "quota_leases" and quota["max_leases"] == 1
    assert not quota["blocking"]  # it frees when alice's lease ends


def test_explain__quarantined_device() -> None:
    sick = device(quarantined_since=NOW, quarantine_reason="3 Xid faults")
    answer = explain(inputs(job(gpu=GPU), devices=[sick]))
    quarantined = reason(answer, "device_quarantined")
    assert quarantined["devices"] == ["n1/0"]
    assert "3 Xid faults" in quarantined["message"]
    assert quarantined["blocking"]  # only it could hold the job: it waits for an admin
    assert "no_gpus" in codes(answer)  # no other device: nothing can take it
    assert not answer.runnable


def test_explain__quarantined_device_is_not_blocking_when_a_healthy_one_could_hold_it() -> None:
    sick = device(quarantined_since=NOW, quarantine_reason="3 Xid faults")
    busy = device(1, memory_used_mb=20000)  # could hold the job once it frees
    answer = explain(inputs(job(gpu=GPU), devices=[sick, busy]))
    assert not reason(answer, "device_quarantined")["blocking"]


def test_explain__fair_share_names_the_owner_ahead() -> None:
    policy = AdmissionPolicy.model_validate({"order": "fair_share"})
    mine = lease(
        "mine-token-xx",
        status=LeaseStatus.WAITING,
        owner="alice",
        agent="alice",
        devices=(),
        granted_at=None,
        expires_at=None,
        queued_at=NOW - timedelta(seconds=10),
    )
    carol = replace(mine, token="carol-token-x", owner="carol", agent="carol", queued_at=NOW)
    claimed = job(gpu=GPU, status=JobStatus.CLAIMED, worker_id="w1", attempts=1)
    answer = explain(
        inputs(
            claimed,
            devices=[device()],
            active=[lease("holder-token-1")],
            waiting=[mine, carol],
            leases=[mine],
            policy=policy,
            usage={"alice": 900.0, "carol": 10.0},
        )
    )
    waiting = reason(answer, "lease_waiting")
    assert waiting["ahead"] == 1  # carol came later but used less
    assert waiting["fair_share"]["ahead_owners"] == {"carol": 10.0}
    assert "carol" in waiting["message"] and "alice" in waiting["message"]


def test_explain__running_job() -> None:
    running = job(status=JobStatus.RUNNING, worker_id="w1", attempts=1, started_at=NOW)
    answer = explain(inputs(running))
    assert codes(answer) == ["running"]
    assert answer.runnable and answer.summary.startswith("Running")


def test_explain__finished_job() -> None:
    done = job(status=JobStatus.DONE, finished_at=NOW)
    answer = explain(inputs(done))
    assert codes(answer) == ["finished"]
    assert not answer.runnable
    assert answer.as_dict()["status"] == "done"


def test_explain__model_warm_where_a_worker_serves_it() -> None:
    needs = GpuNeeds(est_vram_mb=1000, model_id="llama")
    placement = ModelPlacement(frozenset({"n1", "n2"}), frozenset({"n2"}))
    answer = explain(
        inputs(job(gpu=needs), devices=[device()], model=placement, model_affinity_s=30.0)
    )
    warm = reason(answer, "model_warm")
    assert warm["serving"] == ["n2"] and "30s" in warm["message"]
    assert answer.runnable


def test_explain__model_warm_only_where_no_worker_runs() -> None:
    needs = GpuNeeds(est_vram_mb=1000, model_id="llama")
    placement = ModelPlacement(frozenset({"n9"}), frozenset())
    answer = explain(inputs(job(gpu=needs), devices=[device()], model=placement))
    assert reason(answer, "model_not_served")["warm_on"] == ["n9"]


def test_explain__model_cold() -> None:
    needs = GpuNeeds(est_vram_mb=1000, model_id="llama")
    answer = explain(inputs(job(gpu=needs), devices=[device()], model=ModelPlacement()))
    assert "warm on no node" in reason(answer, "model_cold")["message"]


def test_explain__a_non_admin_sees_other_owners_holders_redacted() -> None:
    holder = lease("holder-token-1", job_id="bobs-job-id")
    own = lease("alices-token-1", owner="alice", agent="alice", est_vram_mb=2000)
    the_job = job(gpu=GpuNeeds(est_vram_mb=4000))
    for sees_all in (True, False):
        answer = explain(
            inputs(the_job, devices=[device()], active=[holder, own], sees_all=sees_all)
        )
        capacity = reason(answer, "gpu_capacity")
        assert capacity["holders_total"] == 2
        assert [h["est_vram_mb"] for h in capacity["holders"]] == [20000, 2000]
        bobs, alices = capacity["holders"]
        assert alices["token"] == "alices-token-1"  # the caller's own stay named
        if sees_all:
            assert (bobs["token"], bobs["owner"], bobs["job_id"]) == (
                "holder-token-1",
                "bob",
                "bobs-job-id",
            )
        else:
            assert (bobs["token"], bobs["owner"], bobs["agent"], bobs["job_id"]) == (
                None,
                "another owner",
                None,
                None,
            )
            text = repr(answer.as_dict())
            assert "holder-t" not in text and "bob" not in text


def test_explain__a_non_admin_sees_fair_share_owners_ahead_unnamed() -> None:
    policy = AdmissionPolicy.model_validate({"order": "fair_share"})
    mine = lease(
        "mine-token-xx",
        status=LeaseStatus.WAITING,
        owner="alice",
        agent="alice",
        devices=(),
        granted_at=None,
        expires_at=None,
        queued_at=NOW - timedelta(seconds=10),
    )
    carol = replace(mine, token="carol-token-x", owner="carol", agent="carol", queued_at=NOW)
    claimed = job(gpu=GPU, status=JobStatus.CLAIMED, worker_id="w1", attempts=1)
    answer = explain(
        inputs(
            claimed,
            devices=[device()],
            active=[lease("holder-token-1")],
            waiting=[mine, carol],
            leases=[mine],
            policy=policy,
            usage={"alice": 900.0, "carol": 10.0},
            sees_all=False,
        )
    )
    waiting = reason(answer, "lease_waiting")
    assert waiting["ahead"] == 1
    assert waiting["fair_share"]["ahead_owners"] == {"another owner 1": 10.0}
    assert "carol" not in repr(answer.as_dict())
