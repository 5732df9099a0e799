"""The admission orders through the API and the store on both backends: `/policy` switches
the order at run time (the next grant follows it), `fair_share` reads the owners' booked
usage, and a bad policy is a 422 that writes nothing."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest

from orchestrator.admission import Limits
from orchestrator.gpu import SimulatedProbe
from orchestrator.leases import LeaseRequest, LeaseStatus
from tests.integration.harness import System

CARD = 24576
LIMITS = Limits(headroom_mb=0, stale_s=3600.0)


@pytest.fixture
def system(backend_factory: Callable[..., Any]) -> Iterator[System]:
    system = System(backend_factory(node_name="n1"), run_engine=False)
    try:
        yield system
    finally:
        system.close()


def ask(system: System, at: datetime, **fields: Any) -> str:
    """A request for the whole card at `at`: granted, or queued (wait_s 60)."""
    request = LeaseRequest(
        **{"agent": "agent", "est_vram_mb": CARD, "ttl_s": 600.0, "wait_s": 60.0, **fields}
    )
    outcome = system.store.request_lease(request, at, LIMITS)
    assert outcome.lease is not None, outcome.denial
    return outcome.lease.token


def status(system: System, token: str) -> LeaseStatus:
    lease = system.store.get_lease(token)
    assert lease is not None
    return lease.status


def set_policy(system: System, body: dict[str, Any]) -> dict[str, Any]:
    response = system.client.post("/policy", json=body)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def contend(system: System, at: datetime) -> tuple[str, str]:
    """The card held; a long request queued, then a short one; the holder releases.
    Returns (long, short) tokens."""
    holder = ask(system, at)
    long = ask(system, at + timedelta(seconds=1), estimated_duration_s=600.0)
    short = ask(system, at + timedelta(seconds=2), estimated_duration_s=5.0)
    system.store.release_lease(holder, at + timedelta(seconds=3), LIMITS)
    return long, short


def drain(system: System, tokens: tuple[str, ...], at: datetime) -> None:
    for _ in tokens:  # each release grants the next
        for token in tokens:
            if status(system, token) is LeaseStatus.ACTIVE:
                system.store.release_lease(token, at, LIMITS)


def test_policy__switching_the_order_at_run_time_takes_effect(system: System) -> None:
    t0 = system.services.clock.now()
    system.store.report_node("n1", SimulatedProbe([CARD]).read(), t0, 90)
    assert system.client.get("/policy").json()["policy"]["order"] == "priority"

    long, short = contend(system, t0)
    assert status(system, long) is LeaseStatus.ACTIVE  # FIFO within the band
    assert status(system, short) is LeaseStatus.WAITING
    drain(system, (long, short), t0 + timedelta(seconds=4))

    answer = set_policy(system, {"order": "shortest_first"})
    assert answer["policy"]["order"] == "shortest_first"
    long, short = contend(system, t0 + timedelta(seconds=10))
    assert status(system, short) is LeaseStatus.ACTIVE
    assert status(system, long) is LeaseStatus.WAITING


def test_policy__fair_share_grants_the_owner_below_its_share(system: System) -> None:
    t0 = system.services.clock.now()
    system.store.report_node("n1", SimulatedProbe([CARD]).read(), t0, 90)
    # alice has used the card for 100 s already; bob not at all.
    used = ask(system, t0, owner="alice")
    system.store.release_lease(used, t0 + timedelta(seconds=100), LIMITS)
    set_policy(system, {"order": "fair_share", "fair_share": {"half_life_s": 3600}})

    at = t0 + timedelta(seconds=101)
    holder = ask(system, at, owner="carol")
    alice = ask(system, at + timedelta(seconds=1), owner="alice")
    bob = ask(system, at + timedelta(seconds=2), owner="bob")
    system.store.release_lease(holder, at + timedelta(seconds=3), LIMITS)
    assert status(system, bob) is LeaseStatus.ACTIVE
    assert status(system, alice) is LeaseStatus.WAITING


def test_policy__shares_change_the_fair_share_order(system: System) -> None:
    t0 = system.services.clock.now()
    system.store.report_node("n1", SimulatedProbe([CARD]).read(), t0, 90)
    used = ask(system, t0, owner="alice")
    system.store.release_lease(used, t0 + timedelta(seconds=100), LIMITS)
    bob_used = ask(system, t0 + timedelta(seconds=100), owner="bob")
    system.store.release_lease(bob_used, t0 + timedelta(seconds=130), LIMITS)
    # alice used 100 s on a share of 10, bob 30 s on a share of 1: alice is further below.
    set_policy(system, {"order": "fair_share", "fair_share": {"shares": {"alice": 10}}})

    at = t0 + timedelta(seconds=131)
    holder = ask(system, at, owner="carol")
    bob = ask(system, at + timedelta(seconds=1), owner="bob")
    alice = ask(system, at + timedelta(seconds=2), owner="alice")
    system.store.release_lease(holder, at + timedelta(seconds=3), LIMITS)
    assert status(system, alice) is LeaseStatus.ACTIVE
    assert status(system, bob) is LeaseStatus.WAITING


def test_policy__a_lease_request_carries_its_estimated_duration(system: System) -> None:
    system.store.report_node("n1", SimulatedProbe([CARD]).read(), system.services.clock.now(), 90)
    body = {"agent": "a", "est_vram_mb": 1000, "estimated_duration_s": 12.5}
    response = system.client.post("/leases", json=body)
    assert response.status_code == 201, response.text
    assert response.json()["estimated_duration_s"] == 12.5
    stored = system.store.get_lease(response.json()["token"])
    assert stored is not None and stored.estimated_duration_s == 12.5
    before = system.snapshot(contents=True)
    for bad in (0, -1, "soon"):
        refused = system.client.post("/leases", json={**body, "estimated_duration_s": bad})
        assert refused.status_code == 422, refused.text
    assert system.snapshot(contents=True) == before


@pytest.mark.parametrize(
    "body",
    [
        {"order": "lottery"},
        {"order": "fair_share", "fair_share": {"shares": {"alice": -1}}},
        {"fair_share": {"shares": {"alice": 0}}},
        {"fair_share": {"default_share": -2}},
        {"fair_share": {"half_life_s": 0}},
        {"fair_share": {"weights": {}}},
    ],
)
def test_policy__a_bad_order_or_share_is_422_and_writes_nothing(
    system: System, body: dict[str, Any]
) -> None:
    before = system.snapshot(contents=True)
    response = system.client.post("/policy", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]
    assert system.snapshot(contents=True) == before
    assert system.client.get("/policy").json()["version"] == 0
