"""Worker pools and workers over the API, on both backends; and `orchestrator node`
keeping a pool's worker processes, as a user runs it."""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from orchestrator.store.tables import worker_pools, workers
from tests.integration.harness import System, wait_until
from tests.integration.processes import Processes, backend_env, processes

POOL = {"name": "gpu-a", "job_types": ["block", "echo"], "desired": 2, "max_workers": 4}


def create(system: System, **overrides: Any) -> dict[str, Any]:
    response = system.client.post("/pools", json={**POOL, **overrides})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def fleet_rows(system: System) -> dict[str, list[tuple[Any, ...]]]:
    """Every pool and worker row: to prove a refused request wrote nothing."""
    with system.store.engine.connect() as conn:
        return {
            "pools": [tuple(r) for r in conn.execute(sa.select(worker_pools))],
            "workers": [tuple(r) for r in conn.execute(sa.select(workers))],
        }


def test_pools__create_list_scale_drain_stop_resume_delete(system: System) -> None:
    created = create(system, node="node-1", min_warm=1, concurrency=3, idle_timeout_s=120)
    assert created["status"] == "active"
    assert (created["desired"], created["running"], created["min_warm"]) == (2, 0, 1)
    assert (created["max_workers"], created["concurrency"], created["node"]) == (4, 3, "node-1")
    create(system, name="cpu", job_types=["echo"], desired=0, max_workers=None)

    listed = system.client.get("/pools").json()["pools"]
    assert [p["name"] for p in listed] == ["cpu", "gpu-a"]
    assert listed[0]["max_workers"] == 1  # desired 0: at least one
    assert [p["name"] for p in system.client.get("/pools?node=node-2").json()["pools"]] == ["cpu"]

    scaled = system.client.post("/pools/gpu-a/scale", json={"desired": 4})
    assert scaled.status_code == 200, scaled.text
    assert scaled.json()["desired"] == 4
    updated = system.client.patch("/pools/gpu-a", json={"max_workers": 3, "idle_timeout_s": 5})
    assert updated.status_code == 200, updated.text
    assert (updated.json()["desired"], updated.json()["idle_timeout_s"]) == (3, 5)

    # No live worker: a drain is over at once.
    drained = system.client.post("/pools/gpu-a/drain").json()
    assert (drained["status"], drained["desired"]) == ("stopped", 3)
    resumed = system.client.post("/pools/gpu-a/resume").json()
    assert (resumed["status"], resumed["desired"]) == ("active", 3)
    assert system.client.delete("/pools/gpu-a").status_code == 409
    assert system.client.post("/pools/gpu-a/stop").json()["status"] == "stopped"
    assert system.client.post("/pools/gpu-a/stop").json()["status"] == "stopped"
    assert system.client.delete("/pools/gpu-a").status_code == 204
    assert system.client.get("/pools/gpu-a").status_code == 404
    assert [p["name"] for p in system.client.get("/pools").json()["pools"]] == ["cpu"]


BAD_POOLS: list[tuple[str, Any]] = [
    ("name upper case", {**POOL, "name": "GPU"}),
    ("name with slash", {**POOL, "name": "a/b"}),
    ("name too long", {**POOL, "name": "a" * 65}),
    ("no job types", {**POOL, "job_types": []}),
    ("bad job type", {**POOL, "job_types": ["Echo"]}),
    ("job type twice", {**POOL, "job_types": ["echo", "echo"]}),
    ("desired over max", {**POOL, "desired": 5, "max_workers": 4}),
    ("min_warm over desired", {**POOL, "min_warm": 3}),
    ("desired negative", {**POOL, "desired": -1}),
    ("desired not a number", {**POOL, "desired": "2"}),
    ("desired a boolean", {**POOL, "desired": True}),
    ("concurrency zero", {**POOL, "concurrency": 0}),
    ("idle timeout zero", {**POOL, "idle_timeout_s": 0}),
    ("bad node", {**POOL, "node": "node a"}),
    ("unknown field", {**POOL, "colour": "red"}),
    ("not an object", [POOL]),
]


def test_pools__node_names_compare_exactly_on_every_backend(system: System) -> None:
    # MariaDB's default collation would make `Node-1` and `node-1` one node (migration 0011).
    create(system, name="upper", node="Node-1")
    create(system, name="lower", node="node-1")
    for node, names in (("Node-1", ["upper"]), ("node-1", ["lower"]), ("NODE-1", [])):
        listed = system.client.get("/pools", params={"node": node}).json()["pools"]
        assert [p["name"] for p in listed] == names, node


@pytest.mark.parametrize(("case", "body"), BAD_POOLS, ids=[c[0] for c in BAD_POOLS])
def test_create_pool__bad_input_rejected_and_nothing_written(
    system: System, case: str, body: Any
) -> None:
    before = fleet_rows(system)
    response = system.client.post("/pools", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "invalid_request" and response.json()["message"]
    assert fleet_rows(system) == before


def test_pools__conflicts_and_bad_changes_are_refused_and_write_nothing(
    backend_factory: Any,
) -> None:
    system = System(backend_factory(pool_max_total_workers=5))
    try:
        create(system)
        before = fleet_rows(system)
        refused = [
            (system.client.post("/pools", json=POOL), 409, "pool_exists"),
            (system.client.post("/pools", json={**POOL, "name": "b", "desired": 4}), 409, None),
            (system.client.post("/pools/gpu-a/scale", json={"desired": 5}), 422, None),
            (system.client.post("/pools/gpu-a/scale", json={"desired": 2.5}), 422, None),
            (system.client.post("/pools/gpu-a/scale", json={}), 422, None),
            (system.client.post("/pools/nope/scale", json={"desired": 1}), 404, "pool_not_found"),
            (system.client.post("/pools/BAD/drain"), 422, None),
            (system.client.patch("/pools/gpu-a", json={}), 422, None),
            (
                system.client.patch("/pools/gpu-a", json={"min_warm": 9, "max_workers": 8}),
                422,
                None,
            ),
            (system.client.delete("/pools/gpu-a"), 409, "conflict"),
            (system.client.post("/pools/nope/resume"), 404, "pool_not_found"),
            (system.client.get("/workers?limit=0"), 422, None),
        ]
        for response, status, code in refused:
            assert response.status_code == status, response.text
            assert response.json()["message"]
            if code:
                assert response.json()["error"] == code
        assert fleet_rows(system) == before
        over = system.client.post("/pools", json={**POOL, "name": "b", "desired": 4}).json()
        assert "pool_max_total_workers is 5" in over["message"]
    finally:
        system.close()


def test_workers__a_running_worker_shows_its_current_job(system: System) -> None:
    create(system, desired=1)
    worker = system.start_worker(job_types=["block"], pool="gpu-a", worker_id="w-block")
    job_id = system.submit(type="block")

    def listed() -> dict[str, Any] | None:
        found = {w["id"]: w for w in system.client.get("/workers").json()["workers"]}
        w = found.get("w-block")
        return w if w and w["current_jobs"] == [job_id] else None

    shown = wait_until(listed, what="the worker to show its job")
    assert (shown["pool"], shown["status"], shown["alive"]) == ("gpu-a", "running", True)
    assert (shown["job_types"], shown["concurrency"]) == (
        ["block"],
        system.settings.worker_concurrency,
    )
    assert shown["node"] == system.settings.resolved_node_name() and shown["pid"] > 0
    pool = system.client.get("/pools/gpu-a").json()
    assert pool["running"] == 1 and [w["id"] for w in pool["workers"]] == ["w-block"]
    assert system.client.get("/workers?pool=other").json()["workers"] == []

    system.recorder.release.set()
    assert system.wait_status(job_id)["status"] == "done"
    wait_until(lambda: _worker(system, "w-block")["current_jobs"] == [], what="no job")

    # Drain: the pool waits for its live worker, then stops once it has exited.
    assert system.client.post("/pools/gpu-a/drain").json()["status"] == "draining"
    system.stop_worker(worker)
    assert system.client.get("/workers").json()["workers"] == []
    stopped = _worker(system, "w-block", everything=True)
    assert (stopped["status"], stopped["alive"], stopped["current_jobs"]) == ("stopped", False, [])
    report = system.client.post("/control/pool-policy").json()
    assert report["stopped_pools"] == ["gpu-a"]
    assert system.client.get("/pools/gpu-a").json()["status"] == "stopped"


def _worker(system: System, worker_id: str, *, everything: bool = False) -> dict[str, Any]:
    query = "?all=true" if everything else ""
    found = {w["id"]: w for w in system.client.get(f"/workers{query}").json()["workers"]}
    worker: dict[str, Any] = found[worker_id]
    return worker


def test_pool_policy__waiting_jobs_scale_a_pool_up(system: System) -> None:
    create(system, job_types=["nobody_serves"], desired=1, concurrency=1)
    for _ in range(3):
        system.submit(type="nobody_serves")
    report = system.client.post("/control/pool-policy").json()
    assert report["resized"] == {"gpu-a": 3}
    pool = system.client.get("/pools/gpu-a").json()
    assert pool["desired"] == 3 and pool["last_busy_at"] is not None


# -- `orchestrator node`, as a user runs it ----------------------------------------------------


@pytest.fixture(params=["sqlite", "mariadb"])
def node_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """ORCH_ variables naming this backend's database and a Redis that processes share."""
    with ExitStack() as stack:
        env = {
            "ORCH_DATA_DIR": str(tmp_path / "var"),
            "ORCH_HEARTBEAT_INTERVAL_S": "0.5",
            "ORCH_SCHEDULER_INTERVAL_S": "0.1",
            "ORCH_POOL_RECONCILE_INTERVAL_S": "0.3",
            "ORCH_SHUTDOWN_GRACE_S": "60",
            "ORCH_NODE_NAME": "node-test",
        }
        yield backend_env(request.param, tmp_path, stack, env)


def _live(p: Processes, pool: str) -> list[dict[str, Any]]:
    found = p.http.get(f"/workers?pool={pool}").json()["workers"]
    return [w for w in found if w["alive"] and w["status"] == "running"]


@pytest.mark.slow
def test_node__keeps_a_pools_worker_processes(node_env: dict[str, str], tmp_path: Path) -> None:
    with processes(node_env, tmp_path) as p:
        assert p.run("db", "upgrade").returncode == 0
        server = p.start("serve")
        p.wait_healthy(server)
        create_args = ["create", "cpu", "--types", "echo,sleep", "--desired", "2"]
        created = p.run("pools", *create_args, "--concurrency", "1")
        assert created.returncode == 0, created.stderr
        assert created.stdout.startswith("cpu: active, desired 2")
        node = p.start("node")

        two = wait_until(lambda: len(_live(p, "cpu")) == 2 and _live(p, "cpu"), 60, "2 workers")
        assert len({w["pid"] for w in two}) == 2 and {w["node"] for w in two} == {"node-test"}
        job = p.submit(type="echo", payload="hi")
        assert p.wait_done(job)["result"] == "hi"

        listed = p.run("pools", "list")
        assert listed.returncode == 0 and re.search(
            r"^cpu +active +\* +2/2 ", listed.stdout, re.M
        ), listed.stdout
        shown = p.run("workers", "--pool", "cpu")
        assert shown.returncode == 0 and shown.stdout.count(" running ") == 2, shown.stdout
        too_many = p.run("pools", "scale", "cpu", "9")
        assert too_many.returncode == 1 and "Traceback" not in too_many.stderr
        assert too_many.stderr.startswith("error: 422 desired must be between")
        assert p.run("pools", "scale", "cpu", "1").returncode == 0

        def statuses() -> list[str]:
            found = p.http.get("/workers?pool=cpu&all=true").json()["workers"]
            return sorted(w["status"] for w in found)

        wait_until(lambda: statuses() == ["running", "stopped"], 30, "one worker to exit")

        # Stop: the last worker gives its running job back now (well within the 60 s grace).
        slow = p.submit(type="sleep", payload={"seconds": 120})
        wait_until(lambda: p.http.get(f"/jobs/{slow}").json()["status"] == "running", 30)
        stopped = p.run("pools", "stop", "cpu", "--json")
        assert stopped.returncode == 0 and json.loads(stopped.stdout)["status"] == "stopped"
        wait_until(lambda: not p.http.get("/workers?pool=cpu").json()["workers"], 20, "none")
        assert p.http.get("/pools/cpu").json()["running"] == 0
        assert p.http.get(f"/jobs/{slow}").json()["status"] == "pending"
        events = [e["event"] for e in p.http.get(f"/jobs/{slow}/events").json()["events"]]
        assert events[-1] == "released"

        node.signal(signal.SIGTERM)
        assert node.wait(30) == 0, node.output()
        output = node.output()
        assert "Traceback" not in output and "restarting" not in output
        server.signal(signal.SIGTERM)
        assert server.wait(20) == 0, server.output()
