"""Model preloads end to end, on both backends: `POST /models/preload` submits `preloads`
jobs, a worker warms the models from a model store, `GET /models/status` reports it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from orchestrator.jobs import Priority
from orchestrator.models import PRELOAD_JOB_TYPE
from orchestrator.store import SqlStore
from orchestrator.store.tables import model_preloads, warm_models
from tests.integration.backends import Backend
from tests.integration.harness import System, wait_until
from workers.models import WarmModels

NODE = "node-a"
WORKER = "models-worker"

BackendFactory = Callable[..., Backend]


class Models:
    """A system whose worker serves preloads from a model store under tmp_path."""

    def __init__(self, backend: Backend, root: Path) -> None:
        self.system = System(backend)
        self.root = root
        self.loads: list[str] = []
        self._store: SqlStore | None = None

    def count_loads(self, model_id: str, folder: Path) -> int:
        """The loader: counts its calls, and reads the files like the default one."""
        self.loads.append(model_id)
        return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())

    def start_worker(self) -> WarmModels:
        self._store = self.system.backend.store()
        warm = WarmModels(
            self._store, self.system.settings, worker_id=WORKER, loader=self.count_loads
        )
        registry = self.system.recorder.registry()
        registry.register(PRELOAD_JOB_TYPE, warm.preload)
        self.system.start_worker(registry=registry, worker_id=WORKER)
        return warm

    def add_model(self, model_id: str, size: int = 1000) -> None:
        folder = self.root / model_id
        folder.mkdir(parents=True)
        (folder / "weights.bin").write_bytes(b"w" * size)
        (folder / "config.json").write_bytes(b"{}")

    def preload(self, *models: str, refresh: bool = False) -> dict[str, Any]:
        response = self.system.client.post(
            "/models/preload", json={"models": list(models), "refresh": refresh}
        )
        assert response.status_code == 202, response.text
        body: dict[str, Any] = response.json()
        return body

    def status(self, *models: str) -> dict[str, Any]:
        query = "&".join(f"model={m}" for m in models)
        response = self.system.client.get(f"/models/status?{query}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def wait_settled(self, total: int, timeout: float = 20.0) -> dict[str, Any]:
        """The status once `total` preloads exist and none is in progress."""
        found: dict[str, Any] = wait_until(
            lambda: (
                (s := self.status())["summary"]["total"] == total and not s["in_progress"] and s
            ),
            timeout,
            f"{total} preloads to settle",
        )
        return found

    def preload_rows(self) -> int:
        with self.system.store.engine.connect() as conn:
            count = conn.execute(sa.select(sa.func.count()).select_from(model_preloads))
            return int(count.scalar_one())

    def close(self) -> None:
        self.system.close()
        if self._store is not None:
            self._store.close()


@pytest.fixture
def models(backend_factory: BackendFactory, tmp_path: Path) -> Iterator[Models]:
    root = tmp_path / "models"
    root.mkdir()
    backend = backend_factory(model_store=root, node_name=NODE)
    m = Models(backend, root)
    try:
        yield m
    finally:
        m.close()


def by_model(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["model_id"]: m for m in status["models"]}


def test_preload__two_models_become_ready(models: Models) -> None:
    models.add_model("llama-3-8b", 3000)
    models.add_model("org/embedder", 500)
    warm = models.start_worker()

    answer = models.preload("llama-3-8b", "org/embedder")

    assert [q["model_id"] for q in answer["queued"]] == ["llama-3-8b", "org/embedder"]
    assert answer["skipped"] == []
    status = models.wait_settled(2)
    assert status["all_ready"] is True
    assert status["summary"] == {"total": 2, "done": 2, "failed": 0}
    assert status["errors"] == {}
    assert status["in_progress"] == []
    for model_id, row in by_model(status).items():
        assert (row["status"], row["node"], row["warm_on"]) == ("done", NODE, [NODE]), model_id
    for q in answer["queued"]:
        # The handler records the model warm, then its job's outcome commits: a moment later.
        job = models.system.wait_status(q["job_id"])
        assert (job["type"], job["status"]) == ("preloads", "done")
        assert job["result"]["model_id"] == q["model_id"]
    assert warm.get("llama-3-8b") == 3002  # what the loader returned, kept for handlers
    assert sorted(models.loads) == ["llama-3-8b", "org/embedder"]

    nodes = models.system.client.get("/models").json()["nodes"]
    assert [n["node"] for n in nodes] == [NODE]
    sizes = {m["model_id"]: (m["size_bytes"], m["worker_id"]) for m in nodes[0]["models"]}
    assert sizes == {"llama-3-8b": (3002, WORKER), "org/embedder": (502, WORKER)}


def test_preload__a_missing_model_fails_with_its_error(models: Models) -> None:
    models.add_model("present")
    models.start_worker()

    models.preload("present", "missing")

    status = models.wait_settled(2)
    assert status["summary"] == {"total": 2, "done": 1, "failed": 1}
    assert status["all_ready"] is False
    assert list(status["errors"]) == ["missing"]
    assert "no folder" in status["errors"]["missing"]
    missing = by_model(status)["missing"]
    assert (missing["status"], missing["warm_on"]) == ("failed", [])
    assert models.system.wait_status(missing["job_id"], "dead_letter")["status"] == "dead_letter"
    assert models.status("missing")["summary"] == {"total": 1, "done": 0, "failed": 1}


def test_preload__without_refresh_skips_a_warm_model(models: Models) -> None:
    models.add_model("m1")
    models.add_model("m2")
    models.start_worker()
    models.preload("m1")
    models.wait_settled(1)
    jobs_before = models.system.snapshot()["rows"]["jobs"]

    again = models.preload("m1", "m2")

    assert [q["model_id"] for q in again["queued"]] == ["m2"]
    assert again["skipped"] == [
        {"model_id": "m1", "reason": "warm", "status": "done", "warm_on": [NODE]}
    ]
    assert models.system.snapshot()["rows"]["jobs"] == jobs_before + 1
    models.wait_settled(2)
    assert sorted(models.loads) == ["m1", "m2"]

    refreshed = models.preload("m1", refresh=True)
    assert [q["model_id"] for q in refreshed["queued"]] == ["m1"]
    models.system.wait_status(refreshed["queued"][0]["job_id"], "done")
    assert sorted(models.loads) == ["m1", "m1", "m2"]
    assert by_model(models.status("m1"))["m1"]["job_id"] == refreshed["queued"][0]["job_id"]


def test_preload__a_model_in_progress_is_skipped(models: Models) -> None:
    first = models.preload("m")  # no worker yet: it stays queued
    again = models.preload("m")
    assert again == {
        "queued": [],
        "skipped": [{"model_id": "m", "reason": "in_progress", "status": "queued", "warm_on": []}],
    }
    status = models.status()
    assert status["in_progress"] == ["m"]
    assert status["all_ready"] is False
    assert by_model(status)["m"]["job_id"] == first["queued"][0]["job_id"]


def test_preload__jobs_are_published_on_the_preloads_stream(models: Models) -> None:
    answer = models.preload("a", "b")
    assert models.system.stream_len("preloads") == 2
    key = models.system.backend.keys.stream(PRELOAD_JOB_TYPE, Priority.NORMAL)
    assert key == f"{models.system.settings.redis_prefix}stream:orchestrator:preloads"
    for q in answer["queued"]:
        job = models.system.job(q["job_id"])
        assert job["type"] == "preloads"
        assert job["payload"] == {"model_id": q["model_id"], "refresh": False}


BAD_BODIES: list[Any] = [
    {"models": []},
    {"models": ["../etc"]},
    {"models": ["/abs/path"]},
    {"models": ["a/../../b"]},
    {"models": ["a", "a"]},
    {"models": ["x" * 256]},
    {"models": [f"m{i}" for i in range(101)]},
    {"models": "m"},
    {"models": [1]},
    {"models": ["ok", "bad name"]},
    {"models": ["m"], "extra": True},
    {"models": ["m"], "refresh": "maybe"},
    {},
    [],
]


def test_preload__bad_input_is_refused_and_writes_nothing(models: Models) -> None:
    before = models.system.snapshot()
    for body in BAD_BODIES:
        response = models.system.client.post("/models/preload", json=body)
        assert response.status_code == 422, (body, response.text)
        assert response.json()["error"] == "invalid_request", body
    assert models.system.snapshot() == before
    assert models.preload_rows() == 0


def test_status__bad_model_filter_is_refused(models: Models) -> None:
    response = models.system.client.get("/models/status?model=../x")
    assert response.status_code == 422, response.text
    assert models.system.client.get("/models/status").json() == {
        "in_progress": [],
        "summary": {"total": 0, "done": 0, "failed": 0},
        "errors": {},
        "all_ready": True,
        "models": [],
    }


def test_worker_stop__forgets_its_warm_models(models: Models) -> None:
    models.add_model("m")
    warm = models.start_worker()
    models.preload("m")
    models.wait_settled(1)
    assert warm.forget() == 1
    with models.system.store.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(warm_models)).scalar() == 0
    status = models.status()
    assert by_model(status)["m"]["warm_on"] == []
    assert status["all_ready"] is False  # loaded once, but warm nowhere now
    assert [q["model_id"] for q in models.preload("m")["queued"]] == ["m"]


def test_preload__model_ids_differing_in_case_are_two_models(models: Models) -> None:
    # MariaDB's default collation would make them one row; the folders are two.
    answer = models.preload("Llama-3", "llama-3")
    assert len(answer["queued"]) == 2
    assert sorted(m["model_id"] for m in models.status()["models"]) == ["Llama-3", "llama-3"]
    assert models.preload("LLAMA-3")["queued"][0]["model_id"] == "LLAMA-3"
