"""The model lifecycle beyond preloads, on both backends: `POST /models/evict` unloads a
warm model only when nothing uses it, and agents register the models they need so that
`GET /models/status?agent=` can say whether they are all ready."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.agents import Agent
from orchestrator.errors import Conflict
from orchestrator.fleet import WorkerRegistration
from orchestrator.gpu import SimulatedProbe
from orchestrator.leases import LeaseRequest, LeaseStatus
from orchestrator.models import PRELOAD_JOB_TYPE
from orchestrator.store import SqlStore
from orchestrator.store.tables import warm_models
from tests.integration.backends import Backend
from tests.integration.harness import System, wait_until
from workers.models import WarmModels

NODE = "node-a"
WORKER = "models-worker"


class Lifecycle:
    """A system whose one worker serves preloads and carries out evictions."""

    def __init__(self, backend: Backend, root: Path) -> None:
        self.system = System(backend)
        self.root = root
        self.client = self.system.client
        self._store: SqlStore | None = None
        self.system.store.report_node(
            NODE, SimulatedProbe([24576]).read(), self.system.services.clock.now(), 90
        )

    def start_worker(self) -> WarmModels:
        self._store = self.system.backend.store()
        warm = WarmModels(self._store, self.system.settings, worker_id=WORKER, loader=_load)
        registry = self.system.recorder.registry()
        registry.register(PRELOAD_JOB_TYPE, warm.preload)
        self.system.start_worker(registry=registry, worker_id=WORKER, models=warm)
        return warm

    def warm(self, model_id: str) -> None:
        folder = self.root / model_id
        folder.mkdir(parents=True)
        (folder / "weights.bin").write_bytes(b"w" * 100)
        answer = self.client.post("/models/preload", json={"models": [model_id]})
        assert answer.status_code == 202, answer.text
        wait_until(lambda: self.warm_on(model_id) == [NODE], 20, f"{model_id} warm")

    def warm_on(self, model_id: str) -> list[str]:
        return [
            n["node"]
            for n in self.client.get("/models").json()["nodes"]
            if any(m["model_id"] == model_id for m in n["models"])
        ]

    def close(self) -> None:
        self.system.close()
        if self._store is not None:
            self._store.close()


def _load(model_id: str, folder: Path) -> str:
    return f"loaded {model_id}"


@pytest.fixture
def life(backend_factory: Callable[..., Backend], tmp_path: Path) -> Iterator[Lifecycle]:
    root = tmp_path / "models"
    root.mkdir()
    backend = backend_factory(
        model_store=root, node_name=NODE, heartbeat_interval_s=0.1, visibility_timeout_s=1.0
    )
    life = Lifecycle(backend, root)
    try:
        yield life
    finally:
        life.close()


def take_lease(life: Lifecycle, model_id: str) -> Any:
    return life.client.post(
        "/leases", json={"agent": "a", "est_vram_mb": 1000, "model_id": model_id, "node": NODE}
    )


def test_evict__refused_while_a_lease_uses_the_model_then_unloaded(life: Lifecycle) -> None:
    warm = life.start_worker()
    life.warm("llama")
    assert warm.get("llama") == "loaded llama"
    held = take_lease(life, "llama")
    assert held.status_code == 201, held.text

    refused = life.client.post("/models/evict", json={"model_id": "llama"})

    assert refused.status_code == 409, refused.text
    body = refused.json()
    assert body["error"] == "conflict"
    assert [(u["kind"], u["id"]) for u in body["details"]["users"]] == [
        ("lease", held.json()["token"])
    ]
    assert warm.get("llama") == "loaded llama"  # nothing was touched
    assert life.warm_on("llama") == [NODE]

    release = life.client.post(f"/leases/{held.json()['token']}/release")
    assert release.status_code == 200
    accepted = life.client.post("/models/evict", json={"model_id": "llama", "node": NODE})

    assert accepted.status_code == 202, accepted.text
    assert accepted.json() == {"model_id": "llama", "evicted": [], "evicting": [NODE]}
    wait_until(lambda: warm.get("llama") is None and not life.warm_on("llama"), 10, "unloaded")
    assert life.system.store.pending_evictions(NODE) == []
    assert take_lease(life, "llama").status_code == 201  # evicted: leases are fine again


def test_evict__refused_while_a_job_runs_with_the_model(life: Lifecycle) -> None:
    warm = life.start_worker()
    life.warm("llama")
    job_id = life.system.submit(type="block", gpu={"est_vram_mb": 1000, "model_id": "llama"})
    life.system.wait_status(job_id, "running")

    refused = life.client.post("/models/evict", json={"model_id": "llama"})

    assert refused.status_code == 409, refused.text
    users = {(u["kind"], u["id"]) for u in refused.json()["details"]["users"]}
    assert ("job", job_id) in users
    life.system.recorder.release.set()
    assert life.system.wait_status(job_id)["status"] == "done"
    assert warm.get("llama") == "loaded llama"


def test_evict__no_lease_for_the_model_while_evicting(life: Lifecycle) -> None:
    store = life.system.store
    now = life.system.services.clock.now()
    # A live worker holds the model but has not yet carried out the eviction.
    store.register_worker(WorkerRegistration("holder", NODE, None, None, ["echo"], 1), now)
    store.record_warm(NODE, "bert", "holder", 10, now)
    accepted = life.client.post("/models/evict", json={"model_id": "bert"})
    assert accepted.json()["evicting"] == [NODE]

    denied = take_lease(life, "bert")

    assert denied.status_code == 409, denied.text
    assert denied.json()["reason"] == "model_evicting"
    assert take_lease(life, "other-model").status_code == 201  # other models are unaffected
    store.finish_eviction(NODE, "bert")
    assert take_lease(life, "bert").status_code == 201


def test_evict__a_record_whose_worker_is_gone_is_removed_at_once(life: Lifecycle) -> None:
    store = life.system.store
    store.record_warm(NODE, "stale", "long-gone", 10, life.system.services.clock.now())

    answer = life.client.post("/models/evict", json={"model_id": "stale"})

    assert answer.json() == {"model_id": "stale", "evicted": [NODE], "evicting": []}
    assert life.warm_on("stale") == []


def test_evict__unknown_model_or_node_is_404_and_bad_input_4xx(life: Lifecycle) -> None:
    store = life.system.store
    store.record_warm(NODE, "known", None, 10, life.system.services.clock.now())
    assert life.client.post("/models/evict", json={"model_id": "nope"}).status_code == 404
    missing = life.client.post("/models/evict", json={"model_id": "known", "node": "node-z"})
    assert missing.status_code == 404
    for bad in ({}, {"model_id": ""}, {"model_id": "../etc"}, {"model_id": "x", "extra": 1}):
        assert life.client.post("/models/evict", json=bad).status_code in (400, 422), bad
    assert life.warm_on("known") == [NODE]


def test_agents__register_list_and_all_ready_per_agent(life: Lifecycle) -> None:
    life.start_worker()
    registered = life.client.post(
        "/agents/register",
        json={
            "agent": "chatbot",
            "version": "1.0",
            "capabilities": ["chat"],
            "requires_models": ["llama", "embedder"],
        },
    )
    assert registered.status_code == 200, registered.text
    assert registered.json()["owner"] == "anonymous"
    first_seen = registered.json()["registered_at"]
    life.client.post(
        "/agents/register", json={"agent": "ocr", "version": "2", "requires_models": []}
    )

    status = life.client.get("/models/status?agent=chatbot").json()
    assert (status["agent"], status["all_ready"]) == ("chatbot", False)
    assert status["not_ready"] == ["llama", "embedder"]
    assert life.client.get("/models/status?agent=ocr").json()["all_ready"] is True

    life.warm("llama")
    status = life.client.get("/models/status?agent=chatbot").json()
    assert (status["all_ready"], status["not_ready"]) == (False, ["embedder"])
    life.warm("embedder")
    assert life.client.get("/models/status?agent=chatbot").json()["all_ready"] is True

    # Registering again replaces what it said, and keeps when it first registered.
    again = life.client.post(
        "/agents/register",
        json={"agent": "chatbot", "version": "1.1", "requires_models": ["llama"]},
    ).json()
    assert (again["version"], again["registered_at"]) == ("1.1", first_seen)
    agents = life.client.get("/agents").json()["agents"]
    assert [(a["agent"], a["version"], a["requires_models"]) for a in agents] == [
        ("chatbot", "1.1", ["llama"]),
        ("ocr", "2", []),
    ]


def test_agents__unknown_agent_is_404_and_bad_bodies_4xx(life: Lifecycle) -> None:
    assert life.client.get("/models/status?agent=nobody").status_code == 404
    for bad in (
        {"version": "1"},
        {"agent": "a b", "version": "1"},
        {"agent": "a", "version": "1", "requires_models": ["m", "m"]},
        {"agent": "a", "version": "1", "requires_models": ["/abs"]},
        {"agent": "a", "version": "1", "capabilities": "chat"},
    ):
        assert life.client.post("/agents/register", json=bad).status_code in (400, 422), bad
    assert life.client.get("/agents").json()["agents"] == []


def test_agents__another_owners_agent_is_a_conflict(life: Lifecycle) -> None:
    store = life.system.store
    now = life.system.services.clock.now()
    store.register_agent(Agent("bot", "1", [], ["m"], "team-a", now, now))

    with pytest.raises(Conflict):
        store.register_agent(Agent("bot", "2", [], [], "team-b", now, now))

    assert store.get_agent("bot") == Agent("bot", "1", [], ["m"], "team-a", now, now)
    taken = store.register_agent(Agent("bot", "3", [], [], "team-b", now, now), take_over=True)
    assert (taken.owner, taken.version) == ("team-b", "3")


def test_evict__the_worker_waits_while_its_own_job_uses_the_model(life: Lifecycle) -> None:
    # No engine: "w1" never heartbeats, and on a slow machine the reclaimer would find it
    # lost (visibility timeout 1 s) and forget its warm model, which resolves the eviction.
    life.system.services.engine.stop()
    store = life.system.store
    now = life.system.services.clock.now()
    (life.root / "gemma").mkdir()
    (life.root / "gemma" / "w.bin").write_bytes(b"w")
    warm = WarmModels(store, life.system.settings, worker_id="w1", loader=_load)
    store.register_worker(WorkerRegistration("w1", NODE, None, None, ["echo"], 1), now)
    warm.load("gemma")
    assert life.client.post("/models/evict", json={"model_id": "gemma"}).status_code == 202

    assert warm.carry_out_evictions({"gemma"}) == []  # a job of ours runs with it
    assert warm.get("gemma") == "loaded gemma"
    assert store.pending_evictions(NODE) == ["gemma"]

    assert warm.carry_out_evictions(set()) == ["gemma"]
    assert warm.get("gemma") is None
    assert store.pending_evictions(NODE) == [] and life.warm_on("gemma") == []


def test_evict__a_holder_that_went_away_leaves_nothing_blocking(life: Lifecycle) -> None:
    store = life.system.store
    now = life.system.services.clock.now()
    store.register_worker(WorkerRegistration("holder", NODE, None, None, ["echo"], 1), now)
    store.record_warm(NODE, "bert", "holder", 10, now)
    evicting = life.client.post("/models/evict", json={"model_id": "bert"}).json()["evicting"]
    assert evicting == [NODE]
    assert take_lease(life, "bert").json()["reason"] == "model_evicting"

    store.forget_warm(worker_ids=["holder"])  # the holder was lost before it unloaded

    assert store.pending_evictions(NODE) == []
    assert take_lease(life, "bert").status_code == 201
    store.record_warm(NODE, "bert", "holder-2", 10, now)  # loaded again later: not evicted
    assert store.pending_evictions(NODE) == []


def test_evict__a_row_without_its_warm_record_blocks_nothing(life: Lifecycle) -> None:
    store = life.system.store
    now = life.system.services.clock.now()
    store.register_worker(WorkerRegistration("holder", NODE, None, None, ["echo"], 1), now)
    store.record_warm(NODE, "bert", "holder", 10, now)
    assert life.client.post("/models/evict", json={"model_id": "bert"}).status_code == 202
    with store.engine.begin() as conn:  # the record went some other way: the row is left
        conn.execute(warm_models.delete())

    assert take_lease(life, "bert").status_code == 201


def test_evict__a_worker_not_holding_the_model_finishes_an_orphaned_eviction(
    life: Lifecycle,
) -> None:
    store = life.system.store
    now = life.system.services.clock.now()
    for worker in ("holder", "w2"):
        store.register_worker(WorkerRegistration(worker, NODE, None, None, ["echo"], 1), now)
    store.record_warm(NODE, "bert", "holder", 10, now)
    assert life.client.post("/models/evict", json={"model_id": "bert"}).status_code == 202
    other = WarmModels(store, life.system.settings, worker_id="w2", loader=_load)

    assert other.carry_out_evictions(set()) == []  # the live holder unloads it, not w2
    assert store.pending_evictions(NODE) == ["bert"]

    store.record_warm(NODE, "bert", "w2", 10, now)  # w2's record, but not in w2's memory
    assert other.carry_out_evictions(set()) == ["bert"]
    assert store.pending_evictions(NODE) == [] and life.warm_on("bert") == []
    assert take_lease(life, "bert").status_code == 201


def test_evict__a_waiting_request_is_not_granted_there_while_evicting(life: Lifecycle) -> None:
    store = life.system.store
    limits = life.system.services.leases.limits
    now = life.system.services.clock.now()
    store.register_worker(WorkerRegistration("holder", NODE, None, None, ["echo"], 1), now)
    store.record_warm(NODE, "bert", "holder", 10, now)
    big = store.request_lease(LeaseRequest(agent="big", est_vram_mb=20000, node=NODE), now, limits)
    assert big.lease is not None
    queued = store.request_lease(
        LeaseRequest(agent="a", est_vram_mb=8000, model_id="bert", node=NODE, wait_s=30),
        now,
        limits,
    )
    assert queued.lease is not None and queued.lease.status is LeaseStatus.WAITING
    assert life.client.post("/models/evict", json={"model_id": "bert"}).status_code == 202

    store.release_lease(big.lease.token, now, limits)  # room frees: not for bert, not there
    assert store.sweep_leases(now, limits).granted == []
    assert store.get_lease(queued.lease.token).status is LeaseStatus.WAITING  # type: ignore[union-attr]

    store.finish_eviction(NODE, "bert")  # unloaded: the request may have the card now
    assert [g.token for g in store.sweep_leases(now, limits).granted] == [queued.lease.token]
