"""`SqlStore`'s leases on a SQLite file with a fake clock: request, wait, heartbeat, release,
expire, and the stored admission policy."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest
import sqlalchemy as sa

from orchestrator.admission import Limits
from orchestrator.clock import FakeClock
from orchestrator.errors import Conflict, LeaseExpired, LeaseNotFound, LeaseReleased
from orchestrator.gpu import HEALTH_DEGRADED, HEALTH_OK, DeviceReading, NodeReading, SimulatedProbe
from orchestrator.jobs import Dispatch, GpuNeeds, JobStatus, Priority
from orchestrator.leases import (
    AdmissionPolicy,
    DenyReason,
    Lease,
    LeaseOutcome,
    LeaseRequest,
    LeaseStatus,
    Quota,
)
from orchestrator.store import SqlStore
from orchestrator.store.gpu_base import Renewal
from orchestrator.store.sql_leases import WAIT_GRACE_S
from orchestrator.store.tables import leases
from tests.unit.store_helpers import SpecFactory, Submitter

CARD = 24576
HEADROOM = 512
ROOM = CARD - HEADROOM
LIMITS = Limits(headroom_mb=HEADROOM, stale_s=30.0)
TEMP_LIMIT_C = 90.0


@pytest.fixture
def cards(store: SqlStore, clock: FakeClock) -> SqlStore:
    """The store with node n1 reporting two empty 24 GB cards now."""
    store.report_node("n1", SimulatedProbe([CARD, CARD]).read(), clock.now(), TEMP_LIMIT_C)
    return store


def ask(
    est: int,
    *,
    agent: str = "agent",
    gpu_count: int = 1,
    ttl_s: float = 60.0,
    wait_s: float = 0.0,
    priority: Priority = Priority.NORMAL,
) -> LeaseRequest:
    return LeaseRequest(
        agent=agent,
        est_vram_mb=est,
        gpu_count=gpu_count,
        ttl_s=ttl_s,
        wait_s=wait_s,
        priority=priority,
    )


def take(store: SqlStore, clock: FakeClock, request: LeaseRequest) -> Lease:
    """Request a lease that must be granted at once."""
    outcome = store.request_lease(request, clock.now(), LIMITS)
    assert outcome.granted, outcome.denial
    assert outcome.lease is not None
    return outcome.lease


def queue(store: SqlStore, clock: FakeClock, request: LeaseRequest) -> Lease:
    """Request a lease that must be queued (it waits)."""
    outcome = store.request_lease(request, clock.now(), LIMITS)
    assert outcome.lease is not None and outcome.lease.status is LeaseStatus.WAITING, outcome
    return outcome.lease


def status_of(store: SqlStore, token: str) -> LeaseStatus:
    lease = store.get_lease(token)
    assert lease is not None
    return lease.status


def lease_rows(store: SqlStore) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(leases)).scalar_one())


def leased_per_device(store: SqlStore) -> dict[tuple[str, int], int]:
    held: dict[tuple[str, int], int] = {}
    for lease in store.list_leases((LeaseStatus.ACTIVE,)):
        assert lease.node is not None
        for index in lease.devices:
            key = (lease.node, index)
            held[key] = held.get(key, 0) + lease.est_vram_mb
    return held


def denied(outcome: LeaseOutcome, reason: DenyReason) -> None:
    assert not outcome.granted
    assert outcome.denial is not None
    assert outcome.denial.reason is reason, outcome.denial


# -- requesting ------------------------------------------------------------------------------


def test_request_lease__grants_and_stores_an_active_lease(
    cards: SqlStore, clock: FakeClock
) -> None:
    lease = take(cards, clock, ask(10000, ttl_s=30))
    assert (lease.status, lease.node, lease.devices) == (LeaseStatus.ACTIVE, "n1", (0,))
    assert lease.granted_at == clock.now()
    assert lease.expires_at == clock.now() + timedelta(seconds=30)
    assert cards.get_lease(lease.token) == lease
    assert cards.list_leases() == [lease]


def test_request_lease__fills_the_cards_to_capacity_less_headroom_and_no_further(
    cards: SqlStore, clock: FakeClock
) -> None:
    granted = 0
    while cards.request_lease(ask(3000), clock.now(), LIMITS).granted:
        granted += 1
    assert granted == 2 * (ROOM // 3000)
    assert all(mb <= ROOM for mb in leased_per_device(cards).values())
    # The holes left are too small for 3000, not for 64.
    assert take(cards, clock, ask(ROOM - 3000 * (ROOM // 3000))).est_vram_mb == 64


def test_request_lease__denied_writes_nothing(cards: SqlStore, clock: FakeClock) -> None:
    take(cards, clock, ask(ROOM))
    take(cards, clock, ask(ROOM))
    denied(cards.request_lease(ask(1000), clock.now(), LIMITS), DenyReason.INSUFFICIENT_VRAM)
    assert lease_rows(cards) == 2


def test_request_lease__one_that_can_never_fit_is_not_queued_even_with_wait_s(
    cards: SqlStore, clock: FakeClock
) -> None:
    outcome = cards.request_lease(ask(ROOM + 1, wait_s=30), clock.now(), LIMITS)
    denied(outcome, DenyReason.EXCEEDS_CAPACITY)
    assert outcome.lease is None
    assert lease_rows(cards) == 0


def test_request_lease__gang_is_all_or_nothing(cards: SqlStore, clock: FakeClock) -> None:
    take(cards, clock, ask(20000))
    outcome = cards.request_lease(ask(10000, gpu_count=2), clock.now(), LIMITS)
    denied(outcome, DenyReason.GANG_UNAVAILABLE)
    assert lease_rows(cards) == 1
    assert leased_per_device(cards) == {("n1", 0): 20000}


def test_request_lease__degraded_device_is_not_queued_for(
    store: SqlStore, clock: FakeClock
) -> None:
    hot = DeviceReading(0, "Hot GPU", CARD, 0, temperature_c=95)
    store.report_node("n1", NodeReading("nvml", [hot], True), clock.now(), TEMP_LIMIT_C)
    assert store.list_devices()[0].health == HEALTH_DEGRADED
    outcome = store.request_lease(ask(1000, wait_s=30), clock.now(), LIMITS)
    denied(outcome, DenyReason.GPU_DEGRADED)
    assert lease_rows(store) == 0


def test_request_lease__devices_not_reported_within_stale_s_are_not_leased(
    cards: SqlStore, clock: FakeClock
) -> None:
    clock.advance(LIMITS.stale_s + 1)
    denied(cards.request_lease(ask(1000), clock.now(), LIMITS), DenyReason.NO_GPUS)
    cards.report_node("n1", SimulatedProbe([CARD, CARD]).read(), clock.now(), TEMP_LIMIT_C)
    take(cards, clock, ask(1000))


def test_request_lease__a_later_small_request_does_not_overtake_a_waiting_big_one(
    cards: SqlStore, clock: FakeClock
) -> None:
    holder = take(cards, clock, ask(12000))
    take(cards, clock, ask(ROOM))  # the other card is full
    big = queue(cards, clock, ask(20000, wait_s=30))
    clock.advance(1)
    outcome = cards.request_lease(ask(2000), clock.now(), LIMITS)
    denied(outcome, DenyReason.QUEUED_AHEAD)
    assert lease_rows(cards) == 3
    cards.release_lease(holder.token, clock.now(), LIMITS)
    assert status_of(cards, big.token) is LeaseStatus.ACTIVE


# -- waiting ---------------------------------------------------------------------------------


def fill(store: SqlStore, clock: FakeClock, ttl_s: float = 60.0) -> list[Lease]:
    """Fill both cards; the leases holding them."""
    return [take(store, clock, ask(ROOM, agent="filler", ttl_s=ttl_s)) for _ in range(2)]


def test_request_lease__queued_with_wait_s_and_granted_by_a_release(
    cards: SqlStore, clock: FakeClock
) -> None:
    first, _ = fill(cards, clock)
    outcome = cards.request_lease(ask(10000, wait_s=30), clock.now(), LIMITS)
    assert outcome.lease is not None and outcome.lease.status is LeaseStatus.WAITING
    assert outcome.lease.wait_until == clock.now() + timedelta(seconds=30)
    assert outcome.denial is not None and outcome.denial.reason is DenyReason.INSUFFICIENT_VRAM
    assert outcome.denial.estimated_wait_ms == 60_000
    clock.advance(2)
    cards.release_lease(first.token, clock.now(), LIMITS)
    granted = cards.get_lease(outcome.lease.token)
    assert granted is not None and granted.status is LeaseStatus.ACTIVE
    assert (granted.node, granted.devices, granted.granted_at) == ("n1", (0,), clock.now())
    assert granted.expires_at == clock.now() + timedelta(seconds=60)


def test_finish_wait__times_out_when_nothing_frees(cards: SqlStore, clock: FakeClock) -> None:
    fill(cards, clock)
    waiter = queue(cards, clock, ask(10000, wait_s=5))
    clock.advance(5.01)  # the waiter wakes a moment after its deadline
    outcome = cards.finish_wait(waiter.token, clock.now(), LIMITS)
    denied(outcome, DenyReason.WAIT_TIMEOUT)
    assert outcome.denial is not None and "no device has 10000 MB free" in outcome.denial.message
    timed_out = cards.get_lease(waiter.token)
    assert timed_out is not None and timed_out.status is LeaseStatus.TIMED_OUT
    assert timed_out.released_at == clock.now()


def test_finish_wait__grants_at_the_deadline_when_room_freed_meanwhile(
    cards: SqlStore, clock: FakeClock
) -> None:
    """Room freed by a lease that expired (no sweep ran): the waiter's last look finds it."""
    fill(cards, clock, ttl_s=3)
    waiter = queue(cards, clock, ask(10000, wait_s=5))
    clock.advance(5.01)
    outcome = cards.finish_wait(waiter.token, clock.now(), LIMITS)
    assert outcome.granted, outcome.denial
    assert status_of(cards, waiter.token) is LeaseStatus.ACTIVE


def test_finish_wait__of_a_request_granted_meanwhile_returns_the_lease(
    cards: SqlStore, clock: FakeClock
) -> None:
    first, _ = fill(cards, clock)
    waiter = queue(cards, clock, ask(10000, wait_s=5))
    cards.release_lease(first.token, clock.now(), LIMITS)
    outcome = cards.finish_wait(waiter.token, clock.now(), LIMITS)
    assert outcome.granted
    assert outcome.lease is not None and outcome.lease.token == waiter.token


def test_finish_wait__after_the_sweep_timed_out_the_waiter_is_a_wait_timeout(
    cards: SqlStore, clock: FakeClock
) -> None:
    """A waiter that was late past the grace (a stalled process) still gets a denial."""
    fill(cards, clock)
    waiter = queue(cards, clock, ask(10000, wait_s=1))
    clock.advance(1 + WAIT_GRACE_S + 0.5)
    assert [w.token for w in cards.sweep_leases(clock.now(), LIMITS).timed_out] == [waiter.token]
    denied(cards.finish_wait(waiter.token, clock.now(), LIMITS), DenyReason.WAIT_TIMEOUT)


def test_finish_wait__of_a_request_released_while_waiting_is_not_granted(
    cards: SqlStore, clock: FakeClock
) -> None:
    fill(cards, clock)
    waiter = queue(cards, clock, ask(10000, wait_s=5))
    cards.release_lease(waiter.token, clock.now(), LIMITS)
    outcome = cards.finish_wait(waiter.token, clock.now(), LIMITS)
    assert not outcome.granted
    assert outcome.denial is not None
    assert status_of(cards, waiter.token) is LeaseStatus.RELEASED


def test_finish_wait__unknown_token(cards: SqlStore, clock: FakeClock) -> None:
    with pytest.raises(LeaseNotFound):
        cards.finish_wait("0" * 32, clock.now(), LIMITS)


def test_release_lease__grants_waiters_critical_first_then_first_come_first_served(
    cards: SqlStore, clock: FakeClock
) -> None:
    fillers = fill(cards, clock)
    normal_1 = queue(cards, clock, ask(ROOM, agent="normal-1", wait_s=60))
    clock.advance(1)
    normal_2 = queue(cards, clock, ask(ROOM, agent="normal-2", wait_s=60))
    clock.advance(1)
    critical = queue(cards, clock, ask(ROOM, wait_s=60, priority=Priority.CRITICAL))
    cards.release_lease(fillers[0].token, clock.now(), LIMITS)
    assert [status_of(cards, w.token) for w in (critical, normal_1, normal_2)] == [
        LeaseStatus.ACTIVE,
        LeaseStatus.WAITING,
        LeaseStatus.WAITING,
    ]
    cards.release_lease(fillers[1].token, clock.now(), LIMITS)
    assert status_of(cards, normal_1.token) is LeaseStatus.ACTIVE
    assert status_of(cards, normal_2.token) is LeaseStatus.WAITING


def test_sweep_leases__ageing_serves_an_old_low_request_before_a_new_normal_one(
    cards: SqlStore, clock: FakeClock
) -> None:
    cards.put_policy(AdmissionPolicy(ageing_s=10), clock.now(), "test", None)
    holders = fill(cards, clock, ttl_s=20)
    low = queue(cards, clock, ask(ROOM, agent="low", wait_s=60, priority=Priority.LOW))
    clock.advance(15)
    normal = queue(cards, clock, ask(ROOM, agent="normal", wait_s=60))
    clock.advance(0.5)
    cards.release_lease(holders[0].token, clock.now(), LIMITS)
    assert status_of(cards, low.token) is LeaseStatus.ACTIVE
    assert status_of(cards, normal.token) is LeaseStatus.WAITING


# -- quotas ----------------------------------------------------------------------------------


def test_request_lease__quotas_from_the_stored_policy_deny_and_hold_nothing(
    cards: SqlStore, clock: FakeClock
) -> None:
    policy = AdmissionPolicy(quotas={"anonymous/alice": Quota(max_vram_mb=10000, max_leases=2)})
    cards.put_policy(policy, clock.now(), "test", None)
    first = take(cards, clock, ask(6000, agent="alice"))
    denied(
        cards.request_lease(ask(6000, agent="alice"), clock.now(), LIMITS), DenyReason.QUOTA_VRAM
    )
    take(cards, clock, ask(2000, agent="alice"))
    denied(
        cards.request_lease(ask(100, agent="alice"), clock.now(), LIMITS), DenyReason.QUOTA_LEASES
    )
    take(cards, clock, ask(6000, agent="bob"))
    assert lease_rows(cards) == 3
    # A quota is waited out: the release of alice's first lease lets the waiter in.
    waiter = queue(cards, clock, ask(6000, agent="alice", wait_s=30))
    cards.release_lease(first.token, clock.now(), LIMITS)
    assert status_of(cards, waiter.token) is LeaseStatus.ACTIVE


def test_request_lease__over_the_quota_alone_is_not_queued(
    cards: SqlStore, clock: FakeClock
) -> None:
    cards.put_policy(
        AdmissionPolicy(default_quota=Quota(max_vram_mb=5000)), clock.now(), "test", None
    )
    outcome = cards.request_lease(ask(6000, wait_s=30), clock.now(), LIMITS)
    denied(outcome, DenyReason.QUOTA_VRAM)
    assert lease_rows(cards) == 0


def test_put_policy__versions_and_refuses_a_stale_expected_version(
    store: SqlStore, clock: FakeClock
) -> None:
    assert store.get_policy() == (AdmissionPolicy(), 0)
    policy = AdmissionPolicy(ageing_s=5, quotas={"a": Quota(max_leases=1)})
    assert store.put_policy(policy, clock.now(), "test", 0) == 1
    assert store.get_policy() == (policy, 1)
    with pytest.raises(Conflict):
        store.put_policy(AdmissionPolicy(), clock.now(), "test", 0)
    assert store.get_policy() == (policy, 1)
    assert store.put_policy(AdmissionPolicy(), clock.now(), "test", None) == 2


# -- heartbeats ------------------------------------------------------------------------------


def test_renew_lease__extends_by_the_ttl_and_keeps_the_reported_use(
    cards: SqlStore, clock: FakeClock
) -> None:
    lease = take(cards, clock, ask(10000, ttl_s=10))
    clock.advance(8)
    renewed = cards.renew_lease(lease.token, clock.now(), used_vram_mb=7000)
    assert renewed.expires_at == clock.now() + timedelta(seconds=10)
    assert cards.get_lease(lease.token) == renewed
    assert renewed.used_vram_mb == 7000
    clock.advance(8)  # past the first expiry, within the renewed one
    assert not cards.sweep_leases(clock.now(), LIMITS).expired
    assert status_of(cards, lease.token) is LeaseStatus.ACTIVE


def test_renew_lease__past_its_expiry_is_expired_even_before_the_sweep(
    cards: SqlStore, clock: FakeClock
) -> None:
    lease = take(cards, clock, ask(1000, ttl_s=10))
    clock.advance(10.5)
    with pytest.raises(LeaseExpired):
        cards.renew_lease(lease.token, clock.now())
    cards.sweep_leases(clock.now(), LIMITS)
    with pytest.raises(LeaseExpired):
        cards.renew_lease(lease.token, clock.now())


def test_renew_lease__released_or_unknown(cards: SqlStore, clock: FakeClock) -> None:
    lease = take(cards, clock, ask(1000))
    cards.release_lease(lease.token, clock.now(), LIMITS)
    with pytest.raises(LeaseReleased):
        cards.renew_lease(lease.token, clock.now())
    with pytest.raises(LeaseNotFound):
        cards.renew_lease("f" * 32, clock.now())


def test_renew_leases__returns_the_tokens_no_longer_active(
    cards: SqlStore, clock: FakeClock
) -> None:
    live = take(cards, clock, ask(1000, ttl_s=10))
    gone = take(cards, clock, ask(1000, ttl_s=10))
    late = take(cards, clock, ask(1000, ttl_s=2))
    cards.release_lease(gone.token, clock.now(), LIMITS)
    clock.advance(5)
    lost = cards.renew_leases(
        [Renewal(t, 30) for t in (live.token, gone.token, late.token, "a" * 32)], clock.now()
    )
    assert lost == {gone.token, late.token, "a" * 32}
    renewed = cards.get_lease(live.token)
    assert renewed is not None and renewed.expires_at == clock.now() + timedelta(seconds=30)
    assert status_of(cards, late.token) is LeaseStatus.ACTIVE  # the sweep marks it expired


# -- release ---------------------------------------------------------------------------------


def test_release_lease__is_idempotent(cards: SqlStore, clock: FakeClock) -> None:
    lease = take(cards, clock, ask(1000))
    released = cards.release_lease(lease.token, clock.now(), LIMITS, peak_vram_mb=900, success=True)
    assert (released.status, released.peak_vram_mb, released.success) == (
        LeaseStatus.RELEASED,
        900,
        True,
    )
    clock.advance(3)
    again = cards.release_lease(lease.token, clock.now(), LIMITS, peak_vram_mb=1, success=False)
    assert again == cards.get_lease(lease.token)
    assert (again.released_at, again.peak_vram_mb, again.success) == (
        released.released_at,
        900,
        True,
    )
    with pytest.raises(LeaseNotFound):
        cards.release_lease("b" * 32, clock.now(), LIMITS)


def test_release_lease__of_an_expired_lease_leaves_it_expired(
    cards: SqlStore, clock: FakeClock
) -> None:
    lease = take(cards, clock, ask(1000, ttl_s=1))
    clock.advance(2)
    cards.sweep_leases(clock.now(), LIMITS)
    assert cards.release_lease(lease.token, clock.now(), LIMITS).status is LeaseStatus.EXPIRED


# -- expiry ----------------------------------------------------------------------------------


def test_sweep_leases__expires_leases_not_heartbeated_and_grants_the_room_freed(
    cards: SqlStore, clock: FakeClock
) -> None:
    stale, kept = fill(cards, clock, ttl_s=5)
    waiter = queue(cards, clock, ask(10000, wait_s=60))
    clock.advance(4)
    cards.renew_lease(kept.token, clock.now())
    clock.advance(2)
    sweep = cards.sweep_leases(clock.now(), LIMITS)
    assert [lease.token for lease in sweep.expired] == [stale.token]
    assert [lease.token for lease in sweep.granted] == [waiter.token]
    expired = cards.get_lease(stale.token)
    assert expired is not None and expired.status is LeaseStatus.EXPIRED
    assert (expired.released_at, expired.reason) == (clock.now(), "not heartbeated")
    assert status_of(cards, kept.token) is LeaseStatus.ACTIVE
    assert not cards.sweep_leases(clock.now(), LIMITS).expired  # counted once


def test_request_lease__a_lease_past_its_expiry_holds_nothing_before_the_sweep(
    cards: SqlStore, clock: FakeClock
) -> None:
    fill(cards, clock, ttl_s=5)
    clock.advance(6)
    assert take(cards, clock, ask(ROOM)).devices == (0,)


def test_sweep_leases__times_out_waiters_gone_past_their_deadline_and_grace(
    cards: SqlStore, clock: FakeClock
) -> None:
    fill(cards, clock)
    waiter = queue(cards, clock, ask(1000, wait_s=3))
    clock.advance(3 + WAIT_GRACE_S - 0.5)
    assert not cards.sweep_leases(clock.now(), LIMITS).timed_out
    assert status_of(cards, waiter.token) is LeaseStatus.WAITING
    clock.advance(1)
    assert [w.token for w in cards.sweep_leases(clock.now(), LIMITS).timed_out] == [waiter.token]
    timed_out = cards.get_lease(waiter.token)
    assert timed_out is not None and timed_out.status is LeaseStatus.TIMED_OUT
    assert timed_out.reason == "waiter gone"


# -- devices ---------------------------------------------------------------------------------


def test_report_node__replaces_the_devices_and_judges_their_health(
    cards: SqlStore, clock: FakeClock
) -> None:
    reading = NodeReading(
        "nvml",
        [
            DeviceReading(0, "GPU A", CARD, 1000, temperature_c=60, power_draw_w=100.5),
            DeviceReading(1, "GPU B", CARD, 0, error="NVML_ERROR_UNKNOWN"),
            DeviceReading(2, "GPU C", CARD, 0, temperature_c=95),
        ],
        nvml_supported=True,
        driver_version="550.54",
    )
    clock.advance(1)
    cards.report_node("n1", reading, clock.now(), TEMP_LIMIT_C)
    devices = cards.list_devices()
    assert [(d.index, d.health) for d in devices] == [
        (0, HEALTH_OK),
        (1, HEALTH_DEGRADED),
        (2, HEALTH_DEGRADED),
    ]
    assert devices[1].error == "NVML_ERROR_UNKNOWN"
    assert devices[2].error is not None and "over the limit" in devices[2].error
    assert (devices[0].memory_used_mb, devices[0].power_draw_w) == (1000, 100.5)
    assert all(d.reported_at == clock.now() for d in devices)
    cards.report_node("n1", SimulatedProbe([CARD]).read(), clock.now(), TEMP_LIMIT_C)
    assert [d.index for d in cards.list_devices()] == [0]
    [node] = cards.list_nodes()
    assert (node.name, node.nvml_supported) == ("n1", False)


def test_renew_lease__a_late_heartbeat_cannot_revive_a_lease_whose_room_was_given(
    cards: SqlStore, clock: FakeClock
) -> None:
    holder = take(cards, clock, ask(20000, ttl_s=10, agent="slow"))
    beat_started = clock.now() + timedelta(seconds=9.9)  # the heartbeat's own "now"
    clock.advance(10.1)
    # Past its expiry: the holder's card (the fullest fitting) is leased to another...
    newcomer = take(cards, clock, ask(20000, agent="new"))
    assert status_of(cards, holder.token) is LeaseStatus.EXPIRED
    # ...and the holder's heartbeat, late but stamped before the expiry, is refused.
    with pytest.raises(LeaseExpired):
        cards.renew_lease(holder.token, beat_started)
    assert cards.renew_leases([Renewal(holder.token, 10.0)], beat_started) == {holder.token}
    assert all(mb <= CARD - 512 for mb in leased_per_device(cards).values()), newcomer


def test_cancel_wait__a_waiter_that_gives_up_is_never_granted(
    cards: SqlStore, clock: FakeClock
) -> None:
    held = fill(cards, clock)
    waiter = queue(cards, clock, ask(20000, wait_s=30))

    cards.cancel_wait(waiter.token, clock.now(), LIMITS)
    for lease in held:
        cards.release_lease(lease.token, clock.now(), LIMITS)

    assert status_of(cards, waiter.token) is LeaseStatus.TIMED_OUT


def test_cancel_wait__granted_meanwhile_is_released_at_once(
    cards: SqlStore, clock: FakeClock
) -> None:
    held = fill(cards, clock)
    waiter = queue(cards, clock, ask(20000, wait_s=30))
    cards.release_lease(held[0].token, clock.now(), LIMITS)
    assert status_of(cards, waiter.token) is LeaseStatus.ACTIVE

    cards.cancel_wait(waiter.token, clock.now(), LIMITS)

    assert status_of(cards, waiter.token) is LeaseStatus.RELEASED


def test_renew_leases__a_reclaimed_attempt_cannot_keep_its_jobs_lease(
    cards: SqlStore, clock: FakeClock, submit: Submitter
) -> None:
    job = submit()
    held = cards.claim_job(Dispatch(job.id, job.type, job.priority, 1), "worker-a", clock.now())
    assert held is not None
    lease = take(cards, clock, replace(ask(8000), job_id=job.id))
    beat = [Renewal(lease.token, 30.0, held.token, used_vram_mb=7000)]
    assert cards.renew_leases(beat, clock.now()) == set()
    renewed = cards.get_lease(lease.token)
    assert renewed is not None and renewed.used_vram_mb == 7000

    # The worker froze: its attempt is reclaimed, and its job's lease must not be kept alive.
    clock.advance(1)
    cards.reclaim_stale(clock.now(), clock.now(), 10)

    assert cards.renew_leases(beat, clock.now()) == {lease.token}


def test_mark_running__a_job_cancelled_while_it_waited_for_its_lease_does_not_start(
    cards: SqlStore, clock: FakeClock, make_spec: SpecFactory
) -> None:
    spec = replace(make_spec(), gpu=GpuNeeds(est_vram_mb=1000))
    [submitted] = cards.submit_jobs([spec], clock.now())
    job = submitted.job
    held = cards.claim_job(Dispatch(job.id, job.type, job.priority, 1), "worker-a", clock.now())
    assert held is not None and held.job.status is JobStatus.CLAIMED

    cards.cancel_job(job.id, clock.now(), "operator")

    assert not cards.mark_running(held, clock.now(), {})
    after = cards.get_job(job.id)
    assert after is not None and after.status is JobStatus.CLAIMED  # the worker ends it
