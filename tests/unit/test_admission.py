"""The admission rules as pure functions: `Book.place`, `rank` and `serve_queue` over a
snapshot of devices, active leases and waiting requests, on a fixed time."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

from orchestrator.admission import ANY_NODE, Book, Limits, Placement, rank, serve_queue
from orchestrator.gpu import HEALTH_DEGRADED, HEALTH_OK, Device
from orchestrator.jobs import Priority
from orchestrator.leases import (
    AdmissionPolicy,
    Denial,
    DenyReason,
    Lease,
    LeaseRequest,
    LeaseStatus,
    Quota,
)

NOW = datetime(2026, 1, 1, 12, 0, 0)
CARD = 24576
HEADROOM = 512
ROOM = CARD - HEADROOM  # what one empty card can lease
LIMITS = Limits(headroom_mb=HEADROOM, stale_s=30.0)
POLICY = AdmissionPolicy()


def device(
    index: int = 0,
    node: str = "n1",
    *,
    total: int = CARD,
    used: int = 0,
    health: str = HEALTH_OK,
    error: str | None = None,
    age_s: float = 1.0,
) -> Device:
    return Device(
        node=node,
        index=index,
        name="Test GPU",
        memory_total_mb=total,
        memory_used_mb=used,
        source="simulated",
        health=health,
        reported_at=NOW - timedelta(seconds=age_s),
        error=error,
    )


def two_cards(node: str = "n1") -> list[Device]:
    return [device(0, node), device(1, node)]


_tokens = iter(range(10**6))


def active(
    est: int,
    devices: tuple[int, ...] = (0,),
    node: str = "n1",
    *,
    agent: str = "holder",
    used: int | None = None,
    expires_in_s: float = 60.0,
) -> Lease:
    return Lease(
        token=f"active-{next(_tokens):06d}",
        agent=agent,
        status=LeaseStatus.ACTIVE,
        est_vram_mb=est,
        gpu_count=len(devices),
        priority=Priority.NORMAL,
        ttl_s=60.0,
        queued_at=NOW - timedelta(seconds=10),
        created_at=NOW - timedelta(seconds=10),
        node=node,
        devices=devices,
        granted_at=NOW - timedelta(seconds=10),
        expires_at=NOW + timedelta(seconds=expires_in_s),
        used_vram_mb=used,
    )


def waiting(
    token: str,
    est: int,
    *,
    priority: Priority = Priority.NORMAL,
    waited_s: float = 0.0,
    gpu_count: int = 1,
    agent: str = "waiter",
    node: str | None = None,
) -> Lease:
    queued = NOW - timedelta(seconds=waited_s)
    return Lease(
        token=token,
        agent=agent,
        status=LeaseStatus.WAITING,
        est_vram_mb=est,
        gpu_count=gpu_count,
        priority=priority,
        ttl_s=60.0,
        queued_at=queued,
        created_at=queued,
        node=node,
        wait_until=NOW + timedelta(seconds=30),
    )


def book(
    devices: list[Device],
    leases: list[Lease] | None = None,
    policy: AdmissionPolicy = POLICY,
) -> Book:
    return Book(devices, leases or [], policy, LIMITS, NOW)


def ask(
    est: int, gpu_count: int = 1, agent: str = "agent", node: str | None = None
) -> LeaseRequest:
    return LeaseRequest(agent=agent, est_vram_mb=est, gpu_count=gpu_count, node=node)


def denial(outcome: Placement | Denial) -> Denial:
    assert isinstance(outcome, Denial), outcome
    return outcome


def placement(outcome: Placement | Denial) -> Placement:
    assert isinstance(outcome, Placement), outcome
    return outcome


# -- capacity ------------------------------------------------------------------------------


def test_place__takes_exactly_capacity_less_headroom_and_not_a_megabyte_more() -> None:
    assert placement(book([device()]).place(ask(ROOM))) == Placement("n1", (0,))
    full = book([device()], [active(ROOM - 100)])
    assert placement(full.place(ask(100))) == Placement("n1", (0,))
    refused = denial(full.place(ask(101)))
    assert refused.reason is DenyReason.INSUFFICIENT_VRAM
    assert not refused.final


def test_place__request_no_device_could_ever_hold_is_final() -> None:
    refused = denial(book(two_cards()).place(ask(ROOM + 1)))
    assert refused.reason is DenyReason.EXCEEDS_CAPACITY
    assert refused.final


def test_place__best_fit_uses_the_fullest_device_that_fits() -> None:
    shelf = book(two_cards(), [active(10000, (1,))])
    assert placement(shelf.place(ask(5000))) == Placement("n1", (1,))
    # Too big for the fuller card: the emptier one.
    assert placement(shelf.place(ask(20000))) == Placement("n1", (0,))


def test_book_devices__reports_what_each_device_can_still_lease() -> None:
    shelf = book(two_cards(), [active(10000, (0,)), active(3000, (0,)), active(24000, (1,))])
    assert {d.index: free for d, free in shelf.devices()} == {0: ROOM - 13000, 1: ROOM - 24000}


def test_book_add__counts_each_grant_so_two_requests_cannot_share_the_last_room() -> None:
    shelf = book([device()])
    first = placement(shelf.place(ask(15000)))
    shelf.add(replace(active(15000), node=first.node, devices=first.devices))
    assert denial(shelf.place(ask(15000))).reason is DenyReason.INSUFFICIENT_VRAM


# -- measured memory ---------------------------------------------------------------------------


def test_place__memory_used_outside_any_lease_reduces_what_can_be_leased() -> None:
    busy = book([device(used=20000)])
    assert denial(busy.place(ask(5000))).reason is DenyReason.INSUFFICIENT_VRAM
    assert placement(busy.place(ask(CARD - 20000 - HEADROOM))) == Placement("n1", (0,))


def test_place__a_lease_holders_reported_use_is_not_counted_twice() -> None:
    # The holder of a 10000 MB lease uses 8000 of it: the device measures 8000 used.
    unreported = book([device(used=8000)], [active(10000)])
    assert denial(unreported.place(ask(10000))).reason is DenyReason.INSUFFICIENT_VRAM
    reported = book([device(used=8000)], [active(10000, used=8000)])
    assert placement(reported.place(ask(ROOM - 10000))) == Placement("n1", (0,))
    # ...but the capacity bound still counts the whole reservation.
    assert denial(reported.place(ask(ROOM - 10000 + 1))).reason is DenyReason.INSUFFICIENT_VRAM


def test_lease_outstanding__never_negative_when_a_holder_uses_more_than_it_reserved() -> None:
    assert active(4000, used=6000).outstanding_mb() == 0
    assert active(4000, used=1000).outstanding_mb() == 3000
    assert active(4000).outstanding_mb() == 4000


# -- freshness and health ----------------------------------------------------------------------


def test_place__stale_devices_are_not_leased() -> None:
    stale = book([device(age_s=31), device(1, age_s=45)])
    assert denial(stale.place(ask(1000))).reason is DenyReason.NO_GPUS
    assert stale.devices() == []
    mixed = book([device(age_s=31), device(1, age_s=29)])
    assert placement(mixed.place(ask(1000))) == Placement("n1", (1,))


def test_place__only_a_hot_device_fits__gpu_degraded() -> None:
    hot = device(0, health=HEALTH_DEGRADED, error="temperature 95 C is over the limit of 90 C")
    shelf = book([hot, device(1, used=20000)])
    refused = denial(shelf.place(ask(10000)))
    assert refused.reason is DenyReason.GPU_DEGRADED
    assert refused.unavailable
    assert "n1/0: temperature 95 C" in refused.message
    # A request the healthy device can take goes there.
    assert placement(shelf.place(ask(2000))) == Placement("n1", (1,))


def test_place__a_failing_device_is_never_leased_even_when_empty() -> None:
    failing = device(0, health=HEALTH_DEGRADED, error="NVML_ERROR_GPU_IS_LOST")
    refused = denial(book([failing]).place(ask(1000)))
    assert refused.reason is DenyReason.GPU_DEGRADED
    assert "NVML_ERROR_GPU_IS_LOST" in refused.message


def test_place__node_that_does_not_report_is_no_gpus() -> None:
    refused = denial(book(two_cards("n1")).place(ask(1000, node="n9")))
    assert refused.reason is DenyReason.NO_GPUS
    assert "n9" in refused.message


# -- gangs ---------------------------------------------------------------------------------


def test_place__gang_takes_every_device_on_one_node() -> None:
    assert placement(book(two_cards()).place(ask(10000, gpu_count=2))) == Placement("n1", (0, 1))


def test_place__gang_is_all_or_nothing__one_free_device_of_two_is_refused() -> None:
    shelf = book(two_cards(), [active(20000, (0,))])
    refused = denial(shelf.place(ask(10000, gpu_count=2)))
    assert refused.reason is DenyReason.GANG_UNAVAILABLE
    assert not refused.final


def test_place__gang_is_never_split_across_nodes() -> None:
    # Each node has one free card: two free cards in all, but none together.
    shelf = book(
        two_cards("n1") + two_cards("n2"), [active(20000, (0,), "n1"), active(20000, (1,), "n2")]
    )
    assert denial(shelf.place(ask(10000, gpu_count=2))).reason is DenyReason.GANG_UNAVAILABLE
    roomy = book(two_cards("n1") + two_cards("n2"), [active(20000, (0,), "n1")])
    assert placement(roomy.place(ask(10000, gpu_count=2))) == Placement("n2", (0, 1))


def test_place__gang_larger_than_any_node_is_final() -> None:
    refused = denial(book(two_cards("n1") + two_cards("n2")).place(ask(1000, gpu_count=3)))
    assert refused.reason is DenyReason.EXCEEDS_CAPACITY
    assert refused.final


# -- quotas --------------------------------------------------------------------------------


def test_place__quota_vram_counts_every_device_of_a_gang() -> None:
    policy = AdmissionPolicy(quotas={"anonymous/alice": Quota(max_vram_mb=25000)})
    shelf = book(two_cards(), [active(6000, (0, 1), agent="alice")], policy)
    refused = denial(shelf.place(ask(14000, agent="alice")))
    assert refused.reason is DenyReason.QUOTA_VRAM
    assert not refused.final  # waiting can free it
    assert refused.estimated_wait_ms == 60_000  # when alice's lease expires
    assert placement(shelf.place(ask(13000, agent="alice"))) == Placement("n1", (0,))
    # Other agents of the owner fall under no agent quota, and the owner has none.
    assert isinstance(shelf.place(ask(14000, agent="bob")), Placement)


def test_place__quota_vram_over_the_quota_alone_is_final() -> None:
    policy = AdmissionPolicy(default_quota=Quota(max_vram_mb=8000))
    refused = denial(book(two_cards(), policy=policy).place(ask(5000, gpu_count=2)))
    assert refused.reason is DenyReason.QUOTA_VRAM
    assert refused.final


def test_place__quota_leases_counts_active_leases() -> None:
    policy = AdmissionPolicy(quotas={"anonymous/alice": Quota(max_leases=2)})
    held = [active(1000, agent="alice"), active(1000, agent="alice")]
    refused = denial(book(two_cards(), held, policy).place(ask(1000, agent="alice")))
    assert refused.reason is DenyReason.QUOTA_LEASES
    assert not refused.final
    nothing = AdmissionPolicy(quotas={"anonymous/alice": Quota(max_leases=0)})
    assert denial(book(two_cards(), policy=nothing).place(ask(1, agent="alice"))).final


def test_place__the_owner_quota_counts_every_agent_name_and_only_the_owner() -> None:
    policy = AdmissionPolicy(quotas={"alice": Quota(max_leases=1)})
    shelf = book(two_cards(), [replace(active(1000, agent="a1"), owner="alice")], policy)
    renamed = LeaseRequest(agent="another-name", owner="alice", est_vram_mb=1000)
    refused = denial(shelf.place(renamed))
    assert refused.reason is DenyReason.QUOTA_LEASES and refused.quota_key == "alice"
    # Bob calling his agent "alice" neither spends alice's quota nor falls under it.
    spoof = LeaseRequest(agent="alice", owner="bob", est_vram_mb=1000)
    assert isinstance(shelf.place(spoof), Placement)
    shelf.add(replace(active(1000, agent="alice"), owner="bob"))
    assert isinstance(shelf.place(spoof), Placement)


def test_place__an_agent_quota_is_scoped_to_its_owner() -> None:
    policy = AdmissionPolicy(quotas={"alice/trainer": Quota(max_leases=1)})
    shelf = book(two_cards(), [replace(active(1000, agent="trainer"), owner="alice")], policy)
    again = LeaseRequest(agent="trainer", owner="alice", est_vram_mb=1000)
    assert denial(shelf.place(again)).quota_key == "alice/trainer"
    for owner, agent in (("bob", "trainer"), ("alice", "other")):
        other = LeaseRequest(agent=agent, owner=owner, est_vram_mb=1000)
        assert isinstance(shelf.place(other), Placement), (owner, agent)


# -- ranking -------------------------------------------------------------------------------


def test_rank__critical_band_before_normal_whatever_the_arrival() -> None:
    early_normal = waiting("a", 1000, waited_s=5)
    late_critical = waiting("b", 1000, priority=Priority.CRITICAL)
    assert rank(late_critical, POLICY, NOW) < rank(early_normal, POLICY, NOW)


def test_rank__first_come_first_served_within_a_band() -> None:
    first, second = waiting("b", 1000, waited_s=2), waiting("a", 1000, waited_s=1)
    assert rank(first, POLICY, NOW) < rank(second, POLICY, NOW)


def test_rank__ageing_raises_an_old_low_request_above_a_new_normal_one() -> None:
    policy = AdmissionPolicy(ageing_s=10)
    old_low = waiting("a", 1000, priority=Priority.LOW, waited_s=12)
    new_normal = waiting("b", 1000, priority=Priority.NORMAL)
    assert rank(old_low, policy, NOW)[0] == int(Priority.NORMAL)
    assert rank(old_low, policy, NOW) < rank(new_normal, policy, NOW)
    # Before it has waited one ageing period it is still behind.
    young_low = waiting("c", 1000, priority=Priority.LOW, waited_s=9)
    assert rank(new_normal, policy, NOW) < rank(young_low, policy, NOW)


def test_rank__ageing_stops_at_the_critical_band() -> None:
    policy = AdmissionPolicy(ageing_s=1)
    ancient = waiting("a", 1000, priority=Priority.LOW, waited_s=3600)
    assert rank(ancient, policy, NOW)[0] == int(Priority.CRITICAL)
    # An ancient low one ties with critical ones only by arrival.
    new_critical = waiting("b", 1000, priority=Priority.CRITICAL)
    assert rank(ancient, policy, NOW) < rank(new_critical, policy, NOW)


# -- serving the queue ---------------------------------------------------------------------


def test_serve_queue__critical_is_granted_before_earlier_normal_ones() -> None:
    shelf = book([device()], [active(ROOM - 10000)])  # room for one 10000 request
    queue = [
        waiting("n1", 10000, waited_s=3),
        waiting("n2", 10000, waited_s=2),
        waiting("c", 10000, priority=Priority.CRITICAL, waited_s=1),
    ]
    served = serve_queue(shelf, queue, POLICY)
    assert list(served.granted) == ["c"]
    assert served.denied["n1"].reason is DenyReason.INSUFFICIENT_VRAM
    assert served.denied["n2"].reason is DenyReason.QUEUED_AHEAD


def test_serve_queue__first_come_first_served_within_a_band() -> None:
    shelf = book([device()], [active(ROOM - 20000)])  # room for two 10000 requests
    queue = [
        waiting("third", 10000, waited_s=1),
        waiting("first", 10000, waited_s=3),
        waiting("second", 10000, waited_s=2),
    ]
    served = serve_queue(shelf, queue, POLICY)
    assert list(served.granted) == ["first", "second"]
    assert list(served.denied) == ["third"]


def test_serve_queue__ageing_serves_an_old_low_request_before_a_new_normal_one() -> None:
    policy = AdmissionPolicy(ageing_s=10)
    shelf = book([device()], [active(ROOM - 10000)], policy)
    queue = [
        waiting("new-normal", 10000),
        waiting("old-low", 10000, priority=Priority.LOW, waited_s=15),
    ]
    assert list(serve_queue(shelf, queue, policy).granted) == ["old-low"]
    # Without ageing (a very long period), the normal one wins.
    patient = AdmissionPolicy(ageing_s=3600)
    shelf = book([device()], [active(ROOM - 10000)], patient)
    assert list(serve_queue(shelf, queue, patient).granted) == ["new-normal"]


def test_serve_queue__a_big_waiting_request_is_not_starved_by_later_small_ones() -> None:
    shelf = book([device()], [active(12000)])  # 12064 free: the big one needs 20000
    queue = [
        waiting("big", 20000, waited_s=5),
        waiting("small-1", 2000, waited_s=4),
        waiting("small-2", 2000, waited_s=3),
    ]
    served = serve_queue(shelf, queue, POLICY)
    assert served.granted == {}
    assert served.denied["big"].reason is DenyReason.INSUFFICIENT_VRAM
    assert served.denied["small-1"].reason is DenyReason.QUEUED_AHEAD
    assert served.denied["small-2"].reason is DenyReason.QUEUED_AHEAD
    # Once the holder leaves, the big one goes first.
    freed = serve_queue(book([device()]), queue, POLICY)
    assert list(freed.granted) == ["big", "small-1", "small-2"]


def test_serve_queue__a_request_waiting_for_one_node_does_not_hold_back_others() -> None:
    devices = [device(0, "n1"), device(0, "n2")]
    shelf = book(devices, [active(20000, (0,), "n1")])
    queue = [waiting("pinned", 10000, node="n1", waited_s=5), waiting("any", 10000, waited_s=1)]
    served = serve_queue(shelf, queue, POLICY)
    assert served.denied["pinned"].reason is DenyReason.INSUFFICIENT_VRAM
    assert served.granted == {"any": Placement("n2", (0,))}


def test_serve_queue__a_request_over_its_quota_does_not_hold_back_others() -> None:
    policy = AdmissionPolicy(quotas={"anonymous/alice": Quota(max_leases=1)})
    shelf = book([device()], [active(1000, agent="alice")], policy)
    queue = [waiting("alice", 1000, agent="alice", waited_s=5), waiting("bob", 1000, agent="bob")]
    served = serve_queue(shelf, queue, policy)
    assert served.denied["alice"].reason is DenyReason.QUOTA_LEASES
    assert list(served.granted) == ["bob"]


def test_serve_queue__a_gang_waiting_holds_back_later_single_requests() -> None:
    shelf = book(two_cards(), [active(20000, (0,))])
    queue = [waiting("gang", 10000, gpu_count=2, waited_s=5), waiting("single", 1000)]
    served = serve_queue(shelf, queue, POLICY)
    assert served.denied["gang"].reason is DenyReason.GANG_UNAVAILABLE
    assert served.denied["single"].reason is DenyReason.QUEUED_AHEAD


def test_place__queued_ahead_when_every_node_is_held_for_earlier_requests() -> None:
    refused = denial(book(two_cards()).place(ask(1000), excluded={ANY_NODE}))
    assert refused.reason is DenyReason.QUEUED_AHEAD
    assert not refused.final


# -- wait estimates -----------------------------------------------------------------------------


def test_place__estimated_wait_is_when_enough_leases_expire() -> None:
    shelf = book(
        [device()],
        [active(8000, expires_in_s=10), active(8000, expires_in_s=20), active(8000)],
    )
    refused = denial(shelf.place(ask(10000)))
    assert refused.reason is DenyReason.INSUFFICIENT_VRAM
    # The first expiry frees 8000 (8064 free: not enough), the second 16064.
    assert refused.estimated_wait_ms == 20_000


def test_serve_queue__a_blocked_request_holds_back_only_the_nodes_it_could_use() -> None:
    # Node "big" (80 GB) is busy; node "small" (24 GB) is idle. A 70 GB request for any node
    # can only ever fit on "big": it must not hold back a 4 GB request that fits "small".
    big = device(0, "big", total=81920)
    book = Book([big, device(0, "small")], [active(60000, node="big")], POLICY, LIMITS, NOW)
    queue = [waiting("w-big", 70000, waited_s=10), waiting("w-small", 4000)]

    result = serve_queue(book, queue, POLICY)

    assert result.denied["w-big"].reason is DenyReason.INSUFFICIENT_VRAM
    assert result.granted["w-small"] == Placement("small", (0,))
