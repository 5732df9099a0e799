"""The admission orders (fifo, priority, shortest_first, fair_share) as pure functions, and
fair share over a simulated run on a fake clock: who gets a contended card, and how much
GPU time each owner ends up with."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from itertools import count

import pytest

from orchestrator.admission import Book, Limits, serve_queue
from orchestrator.gpu import HEALTH_OK, Device
from orchestrator.jobs import Priority
from orchestrator.leases import AdmissionPolicy, FairShare, Lease, LeaseStatus, QueueOrder
from orchestrator.queue_order import Turns, UsageSample, decayed_usage

NOW = datetime(2026, 1, 1, 12, 0, 0)
CARD = 24576
LIMITS = Limits(headroom_mb=0, stale_s=1e9)  # the fake clock runs for hours: never stale
_tokens = count()


def card(index: int = 0) -> Device:
    return Device(
        node="n1",
        index=index,
        name="Test GPU",
        memory_total_mb=CARD,
        memory_used_mb=0,
        source="simulated",
        health=HEALTH_OK,
        reported_at=NOW,
    )


def request(
    owner: str,
    at: datetime = NOW,
    *,
    priority: Priority = Priority.NORMAL,
    duration_s: float | None = None,
    est: int = CARD,
) -> Lease:
    return Lease(
        token=f"{owner}-{next(_tokens):06d}",
        agent=owner,
        owner=owner,
        status=LeaseStatus.WAITING,
        est_vram_mb=est,
        gpu_count=1,
        priority=priority,
        ttl_s=60.0,
        queued_at=at,
        created_at=at,
        estimated_duration_s=duration_s,
    )


def policy(order: QueueOrder, **fair: object) -> AdmissionPolicy:
    return AdmissionPolicy(order=order, ageing_s=86400, fair_share=FairShare.model_validate(fair))


def order_of(
    waiting: list[Lease], p: AdmissionPolicy, usage: dict[str, float] | None = None
) -> list[str]:
    return [lease.token for lease in Turns(waiting, p, NOW, usage)]


# -- the static orders ------------------------------------------------------------------


def test_fifo__ignores_bands() -> None:
    early_low = request("a", NOW - timedelta(seconds=5), priority=Priority.LOW)
    late_critical = request("b", NOW, priority=Priority.CRITICAL)
    fifo = order_of([late_critical, early_low], policy(QueueOrder.FIFO))
    assert fifo == [early_low.token, late_critical.token]
    by_band = order_of([late_critical, early_low], policy(QueueOrder.PRIORITY))
    assert by_band == [late_critical.token, early_low.token]


def test_shortest_first__picks_the_short_one() -> None:
    long = request("a", NOW - timedelta(seconds=30), duration_s=600)
    unknown = request("b", NOW - timedelta(seconds=60))
    short = request("c", NOW, duration_s=5)
    p = policy(QueueOrder.SHORTEST_FIRST)
    assert order_of([long, unknown, short], p) == [short.token, long.token, unknown.token]
    # On one card, the short request is the one granted.
    result = serve_queue(Book([card()], [], p, LIMITS, NOW), [long, unknown, short], p)
    assert list(result.granted) == [short.token]


def test_shortest_first__bands_still_dominate() -> None:
    short_low = request("a", duration_s=1, priority=Priority.LOW)
    long_high = request("b", duration_s=3600, priority=Priority.HIGH)
    assert order_of([short_low, long_high], policy(QueueOrder.SHORTEST_FIRST)) == [
        long_high.token,
        short_low.token,
    ]


# -- fair share: the order --------------------------------------------------------------


def test_fair_share__lowest_usage_per_share_first() -> None:
    heavy_first = request("heavy", NOW - timedelta(seconds=60))
    light_later = request("light", NOW)
    p = policy(QueueOrder.FAIR_SHARE)
    usage = {"heavy": 1000.0, "light": 10.0}
    assert order_of([heavy_first, light_later], p, usage) == [light_later.token, heavy_first.token]
    # A share of 200 makes heavy's 1000 GPU-seconds count as 5: now it goes first.
    shared = policy(QueueOrder.FAIR_SHARE, shares={"heavy": 200.0})
    assert order_of([heavy_first, light_later], shared, usage)[0] == heavy_first.token


def test_fair_share__bands_still_dominate() -> None:
    heavy_critical = request("heavy", priority=Priority.CRITICAL)
    light_normal = request("light")
    p = policy(QueueOrder.FAIR_SHARE)
    got = order_of([light_normal, heavy_critical], p, {"heavy": 1e6})
    assert got == [heavy_critical.token, light_normal.token]


def test_fair_share__one_pass_spreads_free_devices_over_owners() -> None:
    """Two free cards, owner a (no usage yet) with two requests waiting, b (a little) with
    one: a's first grant is charged before the second card is given, so b gets it."""
    a1, a2 = request("a", NOW - timedelta(seconds=2)), request("a", NOW - timedelta(seconds=1))
    b1 = request("b", NOW)
    p = policy(QueueOrder.FAIR_SHARE, assumed_duration_s=60)
    book = Book([card(0), card(1)], [], p, LIMITS, NOW)
    result = serve_queue(book, [a1, a2, b1], p, {"b": 30.0})
    assert set(result.granted) == {a1.token, b1.token}
    # Under priority (FIFO within the band) a takes both.
    fifo = policy(QueueOrder.PRIORITY)
    again = serve_queue(Book([card(0), card(1)], [], fifo, LIMITS, NOW), [a1, a2, b1], fifo)
    assert set(again.granted) == {a1.token, a2.token}


def test_decayed_usage__half_life_window_and_active_leases() -> None:
    fair = FairShare(half_life_s=100, window_s=250)
    samples = [
        UsageSample("a", 80.0, NOW),  # counts fully
        UsageSample("a", 80.0, NOW - timedelta(seconds=100)),  # one half-life: half
        UsageSample("b", 80.0, NOW - timedelta(seconds=200)),  # two: a quarter
        UsageSample("b", 1e6, NOW - timedelta(seconds=300)),  # outside the window
    ]
    held = replace(
        request("c"),
        status=LeaseStatus.ACTIVE,
        node="n1",
        devices=(0, 1),
        granted_at=NOW - timedelta(seconds=15),
    )
    usage = decayed_usage(samples, [held], NOW, fair)
    assert usage == pytest.approx({"a": 120.0, "b": 20.0, "c": 30.0})


# -- fair share: a simulated run --------------------------------------------------------


@dataclass
class Run:
    """One card, owners that always have a request waiting, each of their jobs holding the
    card for its owner's duration; the clock jumps from one release to the next."""

    p: AdmissionPolicy
    durations: dict[str, float]
    now: datetime = NOW
    history: list[UsageSample] = field(default_factory=list)

    def go(self, hours: float) -> dict[str, float]:
        waiting = {owner: request(owner, self.now) for owner in self.durations}
        end = self.now + timedelta(hours=hours)
        totals = dict.fromkeys(self.durations, 0.0)
        while self.now < end:
            usage = decayed_usage(self.history, [], self.now, self.p.fair_share)
            book = Book([card()], [], self.p, LIMITS, self.now)
            result = serve_queue(book, list(waiting.values()), self.p, usage)
            (token,) = result.granted
            owner = token.split("-")[0]
            seconds = self.durations[owner]
            self.now += timedelta(seconds=seconds)
            self.history.append(UsageSample(owner, seconds, self.now))
            totals[owner] += seconds
            waiting[owner] = request(owner, self.now)  # it queues its next job at once
        return totals


def test_fair_share__equal_shares_end_within_ten_percent() -> None:
    # a's jobs are three times as long as b's: taking turns would give a 3/4 of the card.
    totals = Run(policy(QueueOrder.FAIR_SHARE, half_life_s=1800), {"a": 90.0, "b": 30.0}).go(8)
    assert totals["a"] == pytest.approx(totals["b"], rel=0.10)


def test_fair_share__two_to_one_shares_give_two_to_one() -> None:
    p = policy(QueueOrder.FAIR_SHARE, half_life_s=1800, shares={"a": 2.0})
    totals = Run(p, {"a": 30.0, "b": 90.0}).go(8)
    assert totals["a"] / totals["b"] == pytest.approx(2.0, rel=0.10)


def test_priority_order__takes_turns_regardless_of_gpu_time() -> None:
    """The same run under `priority`: FIFO within the band gives each owner a turn in
    arrival order, so the owner with longer jobs gets far more GPU time."""
    totals = Run(policy(QueueOrder.PRIORITY), {"a": 90.0, "b": 30.0}).go(8)
    assert totals["a"] / totals["b"] == pytest.approx(3.0, rel=0.10)
