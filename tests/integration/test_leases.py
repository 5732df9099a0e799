"""GPU leases through the API on both backends: no lease past capacity (DESIGN invariant 6),
gangs, priority order, quotas, heartbeats and expiry, waiting, degraded and stale devices,
measured memory, and bad input that changes nothing (invariant 7)."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.gpu import DeviceReading, NodeReading, SimulatedProbe
from orchestrator.leases import LeaseStatus
from orchestrator.store.tables import leases
from tests.integration.harness import System, wait_until

CARD = 24576
HEADROOM = 512
ROOM = CARD - HEADROOM
SETTINGS: dict[str, Any] = {
    "node_name": "n1",
    "gpu_headroom_mb": HEADROOM,
    "lease_sweep_interval_s": 0.05,
    "lease_max_ttl_s": 60.0,
    "lease_max_wait_s": 10.0,
}

OpenSystem = Callable[..., System]
Json = dict[str, Any]


@pytest.fixture
def open_system(backend_factory: Callable[..., Any]) -> Iterator[OpenSystem]:
    """Start a System (API and engine) over a backend with these setting overrides; or,
    given `over=` a System, another one over the same backend (a restart)."""
    systems: list[System] = []

    def start(over: System | None = None, **overrides: Any) -> System:
        backend = over.backend if over is not None else backend_factory(**SETTINGS, **overrides)
        system = System(backend)
        systems.append(system)
        return system

    yield start
    for system in systems:
        if system.client.portal is not None:  # not closed by the test
            system.close()


# -- helpers ---------------------------------------------------------------------------------


def report(system: System, sizes: list[int] | None = None, node: str = "n1") -> None:
    """Node `node` reports simulated cards of `sizes` MB (two 24 GB cards by default), now."""
    reading = SimulatedProbe(sizes or [CARD, CARD]).read()
    report_reading(system, reading, node)


def report_reading(
    system: System, reading: NodeReading, node: str = "n1", at: datetime | None = None
) -> None:
    system.store.report_node(
        node,
        reading,
        at or system.services.clock.now(),
        system.settings.gpu_temp_limit_c,
    )


def post_lease(system: System, est: int, **body: Any) -> Any:
    return system.client.post(
        "/leases", json={"agent": "agent", "est_vram_mb": est, "ttl_s": 30, **body}
    )


def take(system: System, est: int, **body: Any) -> Json:
    response = post_lease(system, est, **body)
    assert response.status_code == 201, response.text
    lease: Json = response.json()
    assert lease["granted"] is True and lease["status"] == "active"
    return lease


def refused(response: Any, status: int, reason: str) -> Json:
    assert response.status_code == status, response.text
    body: Json = response.json()
    assert body["granted"] is False
    assert body["reason"] == reason, body
    assert body["message"]
    return body


def release(system: System, token: str, **body: Any) -> Json:
    response = system.client.post(f"/leases/{token}/release", json=body or None)
    assert response.status_code == 200, response.text
    lease: Json = response.json()
    return lease


def gpu_state(system: System) -> Json:
    response = system.client.get("/gpu_state")
    assert response.status_code == 200, response.text
    state: Json = response.json()
    return state


def lease_rows(system: System) -> list[Json]:
    with system.store.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(leases))]


def active_tokens(system: System) -> set[str]:
    return {lease.token for lease in system.store.list_leases((LeaseStatus.ACTIVE,))}


def assert_within_capacity(system: System) -> None:
    """Invariant 6, read two ways: the API's view of each device, and the active rows."""
    for device in gpu_state(system)["gpus"]:
        where = f"{device['node']}/{device['index']}"
        assert device["leased_mb"] <= device["memory_total_mb"] - HEADROOM, (where, device)
        assert device["leased_mb"] == sum(lease["est_vram_mb"] for lease in device["leases"])
    totals = {(d.node, d.index): d.memory_total_mb for d in system.store.list_devices()}
    held: dict[tuple[str, int], int] = {}
    for lease in system.store.list_leases((LeaseStatus.ACTIVE,)):
        assert lease.node is not None
        assert len(lease.devices) == lease.gpu_count
        for index in lease.devices:
            key = (lease.node, index)
            held[key] = held.get(key, 0) + lease.est_vram_mb
    for key, mb in held.items():
        assert mb <= totals[key] - HEADROOM, (key, mb)


def wait_for_waiting(system: System, count: int) -> None:
    wait_until(lambda: len(gpu_state(system)["waiting"]) == count, 10, f"{count} waiting")


def in_thread(target: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Run `target` in a thread; its result lands in the list."""
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(target()), daemon=True)
    thread.start()
    return thread, result


def metric(system: System, name: str) -> float:
    response = system.client.get("/metrics")
    assert response.status_code == 200
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == name and not sample.labels:
                return float(sample.value)
    raise AssertionError(f"no metric {name}")


# -- capacity under concurrency ------------------------------------------------------------------


def test_request_lease__concurrent_requests_never_over_commit(open_system: OpenSystem) -> None:
    """100 requests from 20 threads, sizes mixed, some waiting, most released right after:
    each grant is followed by a check that no device holds more than it can."""
    system = open_system()
    report(system)
    sizes = [1500, 3000, 5000, 7000, 9000, 11000]

    def one(i: int) -> tuple[int, str | None]:
        body: Json = {"agent": f"agent-{i % 7}"}
        if i % 10 == 9:
            body["wait_s"] = 0.5
        response = post_lease(system, sizes[i % len(sizes)], **body)
        if response.status_code != 201:
            return response.status_code, response.json().get("reason")
        assert_within_capacity(system)
        if i % 4:  # three in four are given back; the rest keep the cards busy
            release(system, response.json()["token"])
        return 201, None

    with ThreadPoolExecutor(20) as pool:
        outcomes = list(pool.map(one, range(100)))
    assert_within_capacity(system)
    granted = [o for o in outcomes if o[0] == 201]
    refusals = {reason for status, reason in outcomes if status == 409}
    assert {status for status, _ in outcomes} <= {201, 409}
    assert len(granted) >= 10
    assert refusals, "the cards were never full: the test proves nothing"
    assert refusals <= {"insufficient_vram", "queued_ahead", "wait_timeout"}
    assert len(lease_rows(system)) >= len(granted)


# -- gangs -----------------------------------------------------------------------------------


def test_request_lease__gang_is_all_or_nothing_and_lands_on_one_node(
    open_system: OpenSystem,
) -> None:
    system = open_system()
    report(system, node="n1")
    report(system, node="n2")
    take(system, 20000, node="n1")
    on_n2 = take(system, 20000, node="n2")
    # One free card on each node: two in all, but not on one node.
    before = lease_rows(system)
    refused(post_lease(system, 10000, gpu_count=2), 409, "gang_unavailable")
    assert lease_rows(system) == before
    release(system, on_n2["token"])
    gang = take(system, 10000, gpu_count=2)
    assert (gang["node"], gang["devices"], gang["gpu_count"]) == ("n2", [0, 1], 2)
    on_devices = {
        (d["node"], d["index"]): [lease["token"] for lease in d["leases"]]
        for d in gpu_state(system)["gpus"]
    }
    assert on_devices[("n2", 0)] == on_devices[("n2", 1)] == [gang["token"]]
    assert gang["token"] not in on_devices[("n1", 1)]
    assert_within_capacity(system)


# -- priority and order ----------------------------------------------------------------------


def test_request_lease__queued_critical_is_granted_before_queued_normal_ones(
    open_system: OpenSystem,
) -> None:
    system = open_system()
    report(system)
    holders = [take(system, ROOM, agent="filler")["token"] for _ in range(2)]
    answers: list[Json] = []
    lock = threading.Lock()

    def wait_for_card(agent: str, priority: str) -> None:
        response = post_lease(system, ROOM, agent=agent, priority=priority, wait_s=10)
        assert response.status_code == 201, response.text
        with lock:
            answers.append(response.json())

    threads = []
    for n, (agent, priority) in enumerate(
        [("normal-1", "normal"), ("normal-2", "normal"), ("critical", "critical")]
    ):
        threads.append(in_thread(functools.partial(wait_for_card, agent, priority))[0])
        wait_for_waiting(system, n + 1)  # each queues after the one before

    def answered(count: int) -> Callable[[], bool]:
        return lambda: len(answers) == count

    for k in range(3):
        release(system, holders.pop(0))
        wait_until(answered(k + 1), 10, f"grant {k + 1}")
        holders.append(answers[k]["token"])
    for thread in threads:
        thread.join(10)
    assert [a["agent"] for a in answers] == ["critical", "normal-1", "normal-2"]
    assert_within_capacity(system)


def test_request_lease__a_waiting_big_request_is_not_starved_by_later_small_ones(
    open_system: OpenSystem,
) -> None:
    system = open_system()
    report(system, [CARD])
    holder = take(system, 12000)
    thread, big = in_thread(lambda: post_lease(system, 20000, agent="big", wait_s=10))
    wait_for_waiting(system, 1)
    # 12064 MB are free, enough for a small one, but the big one queued first.
    refused(post_lease(system, 2000, agent="small"), 409, "queued_ahead")
    release(system, holder["token"])
    thread.join(10)
    assert big[0].status_code == 201, big[0].text
    assert take(system, 2000, agent="small")["devices"] == [0]


# -- quotas ----------------------------------------------------------------------------------


def test_request_lease__quotas_deny_with_nothing_held_and_can_be_waited_out(
    open_system: OpenSystem,
) -> None:
    system = open_system()
    report(system)
    # Open API: every caller is the owner `anonymous`; `anonymous/alice` limits its agent alice.
    alice_quota = "anonymous/alice"
    response = system.client.post(
        "/policy", json={"quotas": {alice_quota: {"max_vram_mb": 10000, "max_leases": 2}}}
    )
    assert response.status_code == 200, response.text
    assert response.json()["version"] == 1
    assert system.client.get("/policy").json()["policy"]["quotas"][alice_quota]["max_leases"] == 2

    def alices() -> list[Json]:
        held = system.client.get("/leases").json()["leases"]
        return [lease for lease in held if lease["agent"] == "alice"]

    first = take(system, 6000, agent="alice")
    refused(post_lease(system, 6000, agent="alice"), 409, "quota_vram")
    assert [lease["token"] for lease in alices()] == [first["token"]]
    take(system, 2000, agent="alice")
    refused(post_lease(system, 100, agent="alice"), 409, "quota_leases")
    assert len(alices()) == 2
    take(system, 6000, agent="bob")  # other agents are not limited
    assert len(lease_rows(system)) == 3

    thread, waited = in_thread(lambda: post_lease(system, 6000, agent="alice", wait_s=5))
    wait_for_waiting(system, 1)
    release(system, first["token"])
    thread.join(10)
    assert waited[0].status_code == 201, waited[0].text
    assert len(alices()) == 2


# -- heartbeats, release, expiry -----------------------------------------------------------------


def test_heartbeat__extends_expires_and_answers_408_404_409(open_system: OpenSystem) -> None:
    system = open_system()
    report(system)
    kept = take(system, 1000)
    beat = system.client.post(f"/leases/{kept['token']}/heartbeat")
    assert beat.status_code == 200, beat.text
    assert beat.json()["expires_at"] > kept["expires_at"]

    dropped = take(system, 1000, ttl_s=0.3)
    wait_until(
        lambda: system.client.get(f"/leases/{dropped['token']}").json()["status"] == "expired",
        5,
        "the sweep to expire the lease",
    )
    late = system.client.post(f"/leases/{dropped['token']}/heartbeat")
    assert late.status_code == 408, late.text
    assert late.json()["error"] == "lease_expired"
    assert metric(system, "gpu_orchestrator_lease_expired_total") == 1.0
    assert active_tokens(system) == {kept["token"]}

    unknown = system.client.post(f"/leases/{'0' * 32}/heartbeat")
    assert unknown.status_code == 404
    assert unknown.json()["error"] == "lease_not_found"

    released = release(system, kept["token"], peak_vram_mb=800, success=True)
    assert (released["status"], released["peak_vram_mb"], released["success"]) == (
        "released",
        800,
        True,
    )
    after = system.client.post(f"/leases/{kept['token']}/heartbeat")
    assert after.status_code == 409
    assert after.json()["error"] == "lease_released"
    assert release(system, kept["token"]) == released  # idempotent
    assert release(system, dropped["token"])["status"] == "expired"


def test_lease__survives_a_restart_of_the_service(open_system: OpenSystem) -> None:
    first = open_system()
    report(first)
    lease = take(first, 5000, ttl_s=30)
    first.close()
    second = open_system(over=first)
    beat = second.client.post(f"/leases/{lease['token']}/heartbeat")
    assert beat.status_code == 200, beat.text
    assert (beat.json()["node"], beat.json()["devices"]) == (lease["node"], lease["devices"])
    assert beat.json()["expires_at"] > lease["expires_at"]
    [device] = [d for d in gpu_state(second)["gpus"] if d["index"] == lease["devices"][0]]
    assert [held["token"] for held in device["leases"]] == [lease["token"]]


# -- waiting ---------------------------------------------------------------------------------


def test_request_lease__waiting_request_is_granted_when_a_release_frees_room(
    open_system: OpenSystem,
) -> None:
    system = open_system()
    report(system)
    holders = [take(system, ROOM)["token"] for _ in range(2)]
    thread, answer = in_thread(lambda: post_lease(system, 10000, agent="waiter", wait_s=8))
    wait_for_waiting(system, 1)
    assert not answer  # still waiting
    freed = release(system, holders[0])
    thread.join(10)
    assert answer[0].status_code == 201, answer[0].text
    granted = answer[0].json()
    assert granted["granted_at"] >= freed["released_at"]
    assert gpu_state(system)["waiting"] == []
    assert_within_capacity(system)


def test_request_lease__wait_times_out_when_nothing_frees(open_system: OpenSystem) -> None:
    system = open_system()
    report(system)
    holders = {take(system, ROOM)["token"] for _ in range(2)}
    refused(post_lease(system, 1000, agent="waiter", wait_s=0.3), 409, "wait_timeout")
    [timed_out] = system.client.get("/leases", params={"status": "timed_out"}).json()["leases"]
    assert (timed_out["agent"], timed_out["status"]) == ("waiter", "timed_out")
    assert active_tokens(system) == holders
    assert gpu_state(system)["waiting"] == []


# -- SAFE_MODE, degraded and stale devices -------------------------------------------------------


def test_safe_mode__grants_nothing_and_the_policy_is_read_only(open_system: OpenSystem) -> None:
    system = open_system(safe_mode=True)
    report(system)
    body = refused(post_lease(system, 1000), 503, "safe_mode")
    assert body["error"] == "lease_unavailable"
    changed = system.client.post("/policy", json={"ageing_s": 5})
    assert changed.status_code == 409
    assert changed.json()["details"]["reason"] == "safe_mode"
    policy = system.client.get("/policy").json()
    assert (policy["version"], policy["read_only"], policy["policy"]["ageing_s"]) == (0, True, 60)
    assert gpu_state(system)["safe_mode"] is True
    assert lease_rows(system) == []


def test_request_lease__only_a_hot_or_failing_device_fits__503_gpu_degraded(
    open_system: OpenSystem,
) -> None:
    system = open_system(gpu_temp_limit_c=90)
    busy = DeviceReading(1, "GPU", CARD, 20000, temperature_c=50)
    hot = DeviceReading(0, "GPU", CARD, 0, temperature_c=95)
    report_reading(system, NodeReading("nvml", [hot, busy], True))
    refused(post_lease(system, 10000), 503, "gpu_degraded")
    assert take(system, 2000)["devices"] == [1]  # what the healthy card can take
    failing = DeviceReading(0, "GPU", CARD, 0, error="NVML_ERROR_GPU_IS_LOST")
    report_reading(system, NodeReading("nvml", [failing, busy], True))
    body = refused(post_lease(system, 10000, wait_s=2), 503, "gpu_degraded")
    assert "NVML_ERROR_GPU_IS_LOST" in body["message"]
    info = system.client.get("/gpu/info").json()
    assert [(g["index"], g["health"]) for g in info["gpus"]] == [(0, "degraded"), (1, "ok")]
    assert len(lease_rows(system)) == 1


def test_request_lease__devices_not_reported_within_gpu_stale_s_are_not_leased(
    open_system: OpenSystem,
) -> None:
    system = open_system(gpu_stale_s=5)
    long_ago = system.services.clock.now() - timedelta(seconds=10)
    report_reading(system, SimulatedProbe([CARD, CARD]).read(), at=long_ago)
    refused(post_lease(system, 1000), 409, "no_gpus")
    info = system.client.get("/gpu/info").json()
    assert info["available"] is False
    assert all(g["stale"] for g in info["gpus"])
    report(system)
    take(system, 1000)


# -- measured memory -----------------------------------------------------------------------------


def test_request_lease__memory_used_outside_any_lease_reduces_what_can_be_leased(
    open_system: OpenSystem,
) -> None:
    system = open_system()
    report_reading(system, NodeReading("nvml", [DeviceReading(0, "GPU", CARD, 20000)], True))
    refused(post_lease(system, 5000), 409, "insufficient_vram")
    take(system, CARD - 20000 - HEADROOM)
    [device] = gpu_state(system)["gpus"]
    assert device["leasable_mb"] == 0


def test_heartbeat__used_vram_stops_the_measured_check_counting_it_twice(
    open_system: OpenSystem,
) -> None:
    system = open_system()
    report(system, [CARD])
    holder = take(system, 10000)
    # The holder's process now uses 8000 MB of its 10000: the card measures them.
    report_reading(system, NodeReading("nvml", [DeviceReading(0, "GPU", CARD, 8000)], True))
    refused(post_lease(system, 10000), 409, "insufficient_vram")
    beat = system.client.post(f"/leases/{holder['token']}/heartbeat", json={"used_vram_mb": 8000})
    assert beat.status_code == 200, beat.text
    assert beat.json()["used_vram_mb"] == 8000
    take(system, 10000)
    # The capacity bound still holds the whole reservation.
    refused(post_lease(system, ROOM - 20000 + 1), 409, "insufficient_vram")
    assert_within_capacity(system)


# -- bad input -------------------------------------------------------------------------------

BAD_LEASES: list[tuple[str, Any]] = [
    ("unknown field", {"agent": "a", "est_vram_mb": 1000, "colour": "red"}),
    ("negative size", {"agent": "a", "est_vram_mb": -5}),
    ("zero size", {"agent": "a", "est_vram_mb": 0}),
    ("size not a number", {"agent": "a", "est_vram_mb": "lots"}),
    ("no agent", {"est_vram_mb": 1000}),
    ("empty agent", {"agent": "", "est_vram_mb": 1000}),
    ("zero gpus", {"agent": "a", "est_vram_mb": 1000, "gpu_count": 0}),
    ("ttl over lease_max_ttl_s", {"agent": "a", "est_vram_mb": 1000, "ttl_s": 61}),
    ("ttl negative", {"agent": "a", "est_vram_mb": 1000, "ttl_s": -1}),
    ("wait over lease_max_wait_s", {"agent": "a", "est_vram_mb": 1000, "wait_s": 11}),
    ("wait negative", {"agent": "a", "est_vram_mb": 1000, "wait_s": -1}),
    ("unknown priority", {"agent": "a", "est_vram_mb": 1000, "priority": "urgent"}),
    ("body is a list", [{"agent": "a", "est_vram_mb": 1000}]),
]


def test_lease_api__bad_input_gets_422_json_and_writes_nothing(open_system: OpenSystem) -> None:
    system = open_system()
    report(system)
    held = take(system, 1000)
    before = (lease_rows(system), system.client.get("/policy").json())
    calls: list[tuple[str, str, Any]] = [("/leases", case, body) for case, body in BAD_LEASES]
    calls += [
        ("/leases/NOT-A-TOKEN/heartbeat", "bad token", None),
        (f"/leases/{held['token'][:-1]}Z/heartbeat", "token not hex", None),
        ("/leases/NOT-A-TOKEN/release", "bad token on release", None),
        (f"/leases/{held['token']}/heartbeat", "negative use", {"used_vram_mb": -1}),
        (f"/leases/{held['token']}/heartbeat", "unknown heartbeat field", {"ttl_s": 999}),
        (f"/leases/{held['token']}/release", "negative peak", {"peak_vram_mb": -1}),
        ("/policy", "ageing zero", {"ageing_s": 0}),
        ("/policy", "negative quota", {"quotas": {"a": {"max_vram_mb": -1}}}),
        ("/policy", "unknown policy field", {"ageing": 5}),
    ]
    for path, case, body in calls:
        response = system.client.post(path, json=body)
        assert response.status_code == 422, (case, response.text)
        error = response.json()
        assert error["error"] == "invalid_request" and error["message"], (case, error)
    not_json = system.client.post(
        "/leases", content=b'{"agent": "a",', headers={"content-type": "application/json"}
    )
    assert not_json.status_code == 422
    listed = system.client.get("/leases", params={"status": "bogus"})
    assert listed.status_code == 422
    assert (lease_rows(system), system.client.get("/policy").json()) == before


# -- what the API shows ----------------------------------------------------------------------------


def test_gpu_info__reports_every_device_and_the_node(open_system: OpenSystem) -> None:
    system = open_system()
    device = DeviceReading(
        0,
        "NVIDIA H100 80GB HBM3",
        81559,
        1200,
        uuid="GPU-1234",
        utilization_gpu_pct=37.0,
        temperature_c=51.0,
        power_draw_w=212.5,
    )
    reading = NodeReading(
        "nvml",
        [device],
        nvml_supported=True,
        mps_enabled=True,
        mps={"pipe_directory": "/tmp/nvidia-mps"},
        driver_version="550.54.15",
    )
    report_reading(system, reading)
    info = system.client.get("/gpu/info").json()
    assert {"gpus", "available", "nvml_supported", "mps_enabled", "mps"} <= set(info)
    [gpu] = info["gpus"]
    expected = {
        "node": "n1",
        "index": 0,
        "name": "NVIDIA H100 80GB HBM3",
        "memory_total_mb": 81559,
        "memory_used_mb": 1200,
        "utilization_gpu_pct": 37.0,
        "temperature_c": 51.0,
        "power_draw_w": 212.5,
    }
    assert {key: gpu[key] for key in expected} == expected
    assert (info["available"], info["nvml_supported"], info["mps_enabled"]) == (True, True, True)
    assert isinstance(info["mps"], dict)
    assert info["mps"]["n1"]["enabled"] is True
    assert info["mps"]["n1"]["pipe_directory"] == "/tmp/nvidia-mps"


def test_gpu_state__shows_the_leases_on_each_device(open_system: OpenSystem) -> None:
    system = open_system()
    report(system)
    small = take(system, 4000)
    big = take(system, 15000)
    gang = take(system, 3000, gpu_count=2)
    state = gpu_state(system)
    assert state["headroom_mb"] == HEADROOM and state["safe_mode"] is False
    by_index = {d["index"]: d for d in state["gpus"]}
    held = {i: {lease["token"] for lease in d["leases"]} for i, d in by_index.items()}
    # Best fit: the second lease joins the first on the fuller card.
    assert held == {0: {small["token"], big["token"], gang["token"]}, 1: {gang["token"]}}
    assert (by_index[0]["leased_mb"], by_index[1]["leased_mb"]) == (22000, 3000)
    assert (by_index[0]["leasable_mb"], by_index[1]["leasable_mb"]) == (ROOM - 22000, ROOM - 3000)
