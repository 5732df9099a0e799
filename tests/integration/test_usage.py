"""GPU accounting on both backends: each lease that held devices books its GPU-seconds and
VRAM-seconds once, when it is released or expires (or its job's worker releases it), and
`/usage`, the CLI and the metrics report them. Times are passed to the store, so durations
are exact and nothing sleeps."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from orchestrator import cli
from orchestrator.admission import Limits
from orchestrator.auth import hash_token
from orchestrator.gpu import SimulatedProbe
from orchestrator.leases import LeaseRequest
from orchestrator.store.sql_usage import usage_samples
from orchestrator.store.tables import usage
from tests.integration.harness import System
from tests.integration.test_gpu_jobs import GpuHandlers

CARD = 24576
NODE = "n1"
LIMITS = Limits(headroom_mb=0, stale_s=3600.0)
ADMIN_TOKEN = "orch_test_admin_token"
ALICE_TOKEN = "orch_test_alice_token"


@pytest.fixture
def system(backend_factory: Callable[..., Any]) -> Iterator[System]:
    # No engine: the only sweeps are the ones a test runs, at the times it says.
    system = System(backend_factory(node_name=NODE), run_engine=False)
    try:
        yield system
    finally:
        system.close()


def report(system: System, at: datetime, cards: int = 2) -> None:
    system.store.report_node(NODE, SimulatedProbe([CARD] * cards).read(), at, 90)


def take(system: System, at: datetime, **ask: Any) -> str:
    request = LeaseRequest(**{"agent": "agent-1", "est_vram_mb": 1000, "ttl_s": 60.0, **ask})
    outcome = system.store.request_lease(request, at, LIMITS)
    assert outcome.granted and outcome.lease is not None, outcome.denial
    return outcome.lease.token


def rows(system: System) -> list[Any]:
    with system.store.engine.connect() as conn:
        return list(conn.execute(sa.select(usage).order_by(usage.c.started_at)))


def test_usage__release_books_gpu_and_vram_seconds(system: System) -> None:
    t0 = system.services.clock.now()
    report(system, t0)
    token = take(system, t0, est_vram_mb=4000, gpu_count=2, operation="train", owner="alice")

    system.store.release_lease(token, t0 + timedelta(seconds=10), LIMITS, peak_vram_mb=3000)

    (row,) = rows(system)
    assert (row.lease_token, row.owner, row.agent, row.type) == (token, "alice", "agent-1", "train")
    assert (row.ended, row.gpu_count, row.node) == ("released", 2, NODE)
    assert row.gpu_seconds == pytest.approx(20.0)  # 10 s x 2 devices
    assert row.vram_mb_seconds_est == pytest.approx(4000 * 10 * 2)
    assert row.vram_mb_seconds_peak == pytest.approx(3000 * 10 * 2)
    # Releasing again changes nothing and books nothing more.
    system.store.release_lease(token, t0 + timedelta(seconds=30), LIMITS)
    assert len(rows(system)) == 1


def test_usage__expiry_books_until_the_expiry_exactly_once_with_two_leaders(
    system: System,
) -> None:
    t0 = system.services.clock.now()
    report(system, t0)
    token = take(system, t0, ttl_s=5.0)
    later = t0 + timedelta(seconds=30)
    # Two leaders overlapping in a failover sweep at the same moment.
    stores = [system.backend.store(), system.backend.store()]
    barrier = threading.Barrier(2)

    def sweep(index: int) -> int:
        barrier.wait()
        return len(stores[index].sweep_leases(later, LIMITS).expired)

    results: list[int] = []
    threads = [threading.Thread(target=lambda i=i: results.append(sweep(i))) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in stores:
        s.close()

    assert sorted(results) == [0, 1]
    (row,) = rows(system)
    assert row.ended == "expired"
    assert row.gpu_seconds == pytest.approx(5.0)  # held until its expiry, not the sweep
    # A late release of the expired lease books nothing.
    assert system.store.release_lease(token, later, LIMITS).status.value == "expired"
    assert len(rows(system)) == 1


def test_usage__a_request_never_granted_books_nothing(system: System) -> None:
    t0 = system.services.clock.now()
    report(system, t0, cards=1)
    take(system, t0, est_vram_mb=CARD)
    waiting = system.store.request_lease(
        LeaseRequest(agent="late", est_vram_mb=CARD, wait_s=5.0), t0, LIMITS
    )
    assert waiting.lease is not None and not waiting.granted
    system.store.finish_wait(waiting.lease.token, t0 + timedelta(seconds=6), LIMITS)
    assert rows(system) == []


def test_usage__a_job_lease_books_its_attempt_and_type(
    backend_factory: Callable[..., Any],
) -> None:
    system = System(
        backend_factory(node_name=NODE, job_lease_wait_s=0.3, lease_sweep_interval_s=0.05)
    )
    try:
        report(system, system.services.clock.now())
        handlers = GpuHandlers()
        system.start_worker(registry=handlers.registry())
        gpu = {"est_vram_mb": 800, "estimated_duration_s": 30.0}
        job_id = system.submit(type="use_gpu", payload={"vram": 700, "seconds": 0.2}, gpu=gpu)
        job = system.wait_status(job_id)
        assert job["status"] == "done" and job["gpu"]["estimated_duration_s"] == 30.0

        (record,) = system.store.usage_of_job(job_id)
        assert (record.attempt, record.type, record.owner) == (1, "use_gpu", "anonymous")
        assert record.ended == "released" and record.peak_vram_mb == 700
        assert 0.2 <= record.gpu_seconds < 10
        assert record.vram_mb_seconds_est == pytest.approx(800 * record.gpu_seconds)
        lease = system.store.get_lease(record.lease_token)
        assert lease is not None and lease.estimated_duration_s == 30.0  # for shortest_first
        by_type = system.client.get("/usage", params={"group_by": "type"}).json()
        assert [g["key"] for g in by_type["groups"]] == ["use_gpu"]
        metrics = system.client.get("/metrics").text
        assert 'gpu_orchestrator_gpu_seconds_total{owner="anonymous",type="use_gpu"}' in metrics
        assert "gpu_orchestrator_vram_mb_seconds_total{" in metrics
    finally:
        system.close()


def _book_three(system: System) -> datetime:
    """alice: 10 s train + 20 s infer (agent-1, agent-2); bob: 40 s infer. Ending at
    t0+10, t0+20 and t0+40."""
    t0 = system.services.clock.now()
    report(system, t0)
    a = take(system, t0, owner="alice", operation="train")
    b = take(system, t0, owner="alice", agent="agent-2", operation="infer")
    c = take(system, t0, owner="bob", operation="infer")
    for token, seconds in ((a, 10), (b, 20), (c, 40)):
        system.store.release_lease(token, t0 + timedelta(seconds=seconds), LIMITS)
    return t0


def test_usage_api__filters_and_grouping(system: System) -> None:
    t0 = _book_three(system)

    def get(**params: Any) -> dict[str, Any]:
        response = system.client.get("/usage", params=params)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def seconds(body: dict[str, Any]) -> dict[str | None, float]:
        return {g["key"]: g["gpu_seconds"] for g in body["groups"]}

    by_owner = get()
    assert seconds(by_owner) == {"bob": 40.0, "alice": 30.0}
    assert [g["key"] for g in by_owner["groups"]] == ["bob", "alice"]  # largest first
    assert by_owner["total"]["gpu_seconds"] == 70.0 and by_owner["total"]["leases"] == 3
    assert seconds(get(group_by="type")) == {"infer": 60.0, "train": 10.0}
    assert seconds(get(group_by="agent")) == {"agent-1": 50.0, "agent-2": 20.0}
    assert seconds(get(group_by="node")) == {NODE: 70.0}
    assert seconds(get(owner="alice", group_by="type")) == {"infer": 20.0, "train": 10.0}
    assert seconds(get(type="infer", agent="agent-1")) == {"bob": 40.0}
    # By when each lease ended: [t0+15, t0+30) holds only alice's 20 s lease.
    since, until = (t0 + timedelta(seconds=15)).isoformat(), (t0 + timedelta(seconds=30))
    assert seconds(get(since=since, until=until.isoformat() + "Z")) == {"alice": 20.0}
    assert get(owner="nobody")["groups"] == []


@pytest.mark.parametrize(
    "params",
    [
        {"group_by": "colour"},
        {"since": "yesterday"},
        {"since": "2026-01-02T00:00:00", "until": "2026-01-01T00:00:00"},
        {"until": "0001-01-01T00:00:00+01:00"},
        {"owner": ""},
        {"owner": "x" * 129},
    ],
)
def test_usage_api__bad_queries_are_422(system: System, params: dict[str, str]) -> None:
    response = system.client.get("/usage", params=params)
    assert response.status_code == 422, response.text
    assert response.json()["error"]


def test_usage_api__a_submitter_sees_only_its_own_owner(
    backend_factory: Callable[..., Any],
) -> None:
    hashes = f"{hash_token(ADMIN_TOKEN)}:admin:ops,{hash_token(ALICE_TOKEN)}:submitter:alice"
    system = System(backend_factory(node_name=NODE, api_token_hashes=hashes), run_engine=False)
    try:
        _book_three(system)
        alice = {"authorization": f"Bearer {ALICE_TOKEN}"}
        mine = system.client.get("/usage", headers=alice).json()
        assert mine["owner"] == "alice"
        assert [g["key"] for g in mine["groups"]] == ["alice"]
        by_type = system.client.get("/usage", params={"group_by": "type"}, headers=alice)
        assert by_type.json()["total"]["gpu_seconds"] == 30.0
        other = system.client.get("/usage", params={"owner": "bob"}, headers=alice)
        assert other.status_code == 403, other.text
        admin = {"authorization": f"Bearer {ADMIN_TOKEN}"}
        everyone = system.client.get("/usage", headers=admin).json()
        assert everyone["total"]["gpu_seconds"] == 70.0
        assert system.client.get("/usage").status_code == 401
    finally:
        system.close()


def test_usage_cli__table_and_json(
    system: System, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`orchestrator usage` turns its flags into the query and prints the answer; the HTTP
    call goes to this system's app (the CLI's transport is tested in test_cli.py)."""
    _book_three(system)
    asked: list[str] = []

    def api(_settings: Any, method: str, path: str, body: Any = None) -> Any:
        asked.append(path)
        response = system.client.request(method, path)
        assert response.status_code == 200, response.text
        return response.json()

    monkeypatch.setattr("orchestrator.cli_usage.api", api)
    assert cli.main(["usage", "--group-by", "type", "--owner", "alice"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["TYPE", "LEASES", "GPU-HOURS"]
    assert [line.split()[0] for line in out[1:]] == ["infer", "train", "(total)"]
    assert out[-1].split()[1:3] == ["2", f"{30 / 3600:.3f}"]
    assert "owner=alice" in asked[0] and "group_by=type" in asked[0]

    assert cli.main(["usage", "--since", "1h", "--json"]) == 0
    shown = capsys.readouterr().out
    import json

    report = json.loads(shown)
    assert report["total"]["gpu_seconds"] == 70.0
    assert "since=" in asked[1]


def test_usage_metrics__agent_operations_are_other_and_peak_is_exported(system: System) -> None:
    t0 = system.services.clock.now()
    report(system, t0)
    for i in range(3):  # free-text operations must not each become a label value
        token = take(system, t0, owner="alice", operation=f"run-{i}")
        system.store.release_lease(token, t0 + timedelta(seconds=10), LIMITS, peak_vram_mb=500)

    totals = system.store.usage_by_owner_type()

    assert totals == [("alice", "other", 30.0, 1000 * 30.0, 500 * 30.0)]
    metrics = system.client.get("/metrics").text
    assert 'gpu_orchestrator_gpu_seconds_total{owner="alice",type="other"} 30.0' in metrics
    assert 'gpu_orchestrator_vram_mb_seconds_peak_total{owner="alice",type="other"}' in metrics
    assert "run-0" not in metrics


def test_usage_samples__summed_per_owner_and_bucket(system: System) -> None:
    t0 = system.services.clock.now()
    report(system, t0)
    for i in range(40):  # 40 leases of 1 s each, ending one second apart
        token = take(system, t0 + timedelta(seconds=i), owner="alice")
        system.store.release_lease(token, t0 + timedelta(seconds=i + 1), LIMITS)
    token = take(system, t0, owner="bob")
    system.store.release_lease(token, t0 + timedelta(seconds=5), LIMITS)

    with system.store.engine.connect() as conn:
        samples = usage_samples(conn, {"alice", "bob"}, t0, bucket_s=10.0)

    alice = sorted((s for s in samples if s.owner == "alice"), key=lambda s: s.ended_at)
    # 40 rows (ending at 1 s .. 40 s) in five 10 s buckets: the read does not grow per lease.
    assert [s.gpu_seconds for s in alice] == pytest.approx([9.0, 10.0, 10.0, 10.0, 1.0])
    assert alice[0].ended_at == t0 + timedelta(seconds=5)  # midway between ends at 1 s and 9 s
    (bob,) = [s for s in samples if s.owner == "bob"]
    assert (bob.gpu_seconds, bob.ended_at) == (pytest.approx(5.0), t0 + timedelta(seconds=5))
