"""`System`: the API (with its engine) and in-process workers over one backend."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from fastapi.testclient import TestClient

from orchestrator.api.app import create_app
from orchestrator.store.tables import metadata
from orchestrator.wiring import Services, build_services
from tests.integration.backends import Backend, migrated
from workers import builtin
from workers.context import JobContext
from workers.registry import HandlerRegistry
from workers.runtime import Worker

TERMINAL = ("done", "dead_letter", "cancelled")
# Written by the engine's own loops as they run, never by a request.
SNAPSHOT_SKIP = ("orchestrator_leader", "orchestrator_state")
# Written only by workers and node reports, which may run alongside a test (a worker
# registers, a node reports its GPUs): left out of the counts, kept in `contents` snapshots.
SNAPSHOT_BACKGROUND = (
    "orchestrator_nodes",
    "orchestrator_gpus",
    "orchestrator_workers",
    "orchestrator_warm_models",
    "orchestrator_gpu_faults",
)
# The names earlier tests read the counts under.
SNAPSHOT_NAMES = {"orchestrator_jobs": "jobs", "orchestrator_job_events": "events"}


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
    """Poll until `predicate` is truthy; its value, or an AssertionError after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(0.02)


class Recorder:
    """Handlers that record each run, so "exactly once" is counted, not assumed."""

    def __init__(self) -> None:
        self.runs: list[tuple[str, int]] = []  # (job id, attempt)
        self.lock = threading.Lock()
        self.release = threading.Event()

    def record(self, ctx: JobContext) -> Any:
        with self.lock:
            self.runs.append((ctx.id, ctx.attempt))
        return {"echo": ctx.payload}

    def block(self, ctx: JobContext) -> Any:
        """Runs until released by the test, or cancelled (cooperatively)."""
        with self.lock:
            self.runs.append((ctx.id, ctx.attempt))
        while not self.release.is_set():
            if ctx.wait(0.02):
                ctx.check_cancelled()
        return "released"

    def stubborn(self, ctx: JobContext) -> Any:
        """Ignores cancellation; only an interrupt stops it."""
        with self.lock:
            self.runs.append((ctx.id, ctx.attempt))
        while True:
            time.sleep(0.01)

    def count(self, job_id: str) -> int:
        with self.lock:
            return sum(1 for j, _ in self.runs if j == job_id)

    def order(self) -> list[str]:
        with self.lock:
            return [j for j, _ in self.runs]

    def registry(self) -> HandlerRegistry:
        registry = HandlerRegistry()
        registry.add_module(builtin)
        registry.register("record", self.record)
        registry.register("block", self.block)
        registry.register("stubborn", self.stubborn)
        return registry


class System:
    def __init__(self, backend: Backend, *, run_engine: bool = True) -> None:
        self.backend = backend
        self.settings = backend.settings
        self.store = migrated(backend)
        self.services: Services = build_services(
            self.settings, store=self.store, streams=backend.streams()
        )
        self.client = TestClient(create_app(self.services, run_engine=run_engine))
        self.client.__enter__()
        self.recorder = Recorder()
        self._workers: list[tuple[Worker, threading.Thread]] = []

    # -- workers -----------------------------------------------------------------------

    def start_worker(self, **kwargs: Any) -> Worker:
        worker = Worker(
            self.backend.store(),
            self.backend.streams(),
            kwargs.pop("registry", None) or self.recorder.registry(),
            kwargs.pop("settings", None) or self.settings,
            **kwargs,
        )
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        self._workers.append((worker, thread))
        return worker

    def stop_worker(self, worker: Worker, timeout: float = 15.0) -> None:
        worker.stop()
        assert worker.wait_stopped(timeout), "worker did not stop"

    # -- API -----------------------------------------------------------------------------

    def submit(self, **body: Any) -> str:
        response = self.client.post("/jobs/submit", json=body)
        assert response.status_code == 202, response.text
        job_id: str = response.json()["job_id"]
        return job_id

    def job(self, job_id: str) -> dict[str, Any]:
        response = self.client.get(f"/jobs/{job_id}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def events(self, job_id: str) -> list[str]:
        return [e["event"] for e in self.client.get(f"/jobs/{job_id}/events").json()["events"]]

    def wait_status(self, job_id: str, *statuses: str, timeout: float = 15.0) -> dict[str, Any]:
        wanted = statuses or TERMINAL
        found: dict[str, Any] = wait_until(
            lambda: (job := self.job(job_id))["status"] in wanted and job,
            timeout,
            f"job {job_id} to be {'/'.join(wanted)}",
        )
        return found

    # -- what is stored ----------------------------------------------------------------------

    def snapshot(self, *, contents: bool = False) -> dict[str, Any]:
        """Row counts of every table a request may write and every stream's length: to
        prove nothing was written. With `contents`, every row and stream entry of every table
        instead, so an update in place shows too (use it with the engine and workers stopped:
        their loops write as they run)."""
        rows: dict[str, Any] = {}
        with self.store.engine.connect() as conn:
            present = set(sa.inspect(conn).get_table_names())
            for table in metadata.sorted_tables:
                if table.name in SNAPSHOT_SKIP or table.name not in present:
                    continue
                if not contents and table.name in SNAPSHOT_BACKGROUND:
                    continue
                name = SNAPSHOT_NAMES.get(table.name, table.name)
                if contents:
                    found = conn.execute(sa.select(table)).all()
                    rows[name] = sorted(repr(tuple(r)) for r in found)
                else:
                    count = sa.select(sa.func.count()).select_from(table)
                    rows[name] = conn.execute(count).scalar()
        client = self.backend.make_redis()
        streams: dict[str, Any] = {}
        for key in sorted(client.scan_iter(f"{self.settings.redis_prefix}stream:*")):
            streams[key] = client.xrange(key) if contents else client.xlen(key)
        return {"rows": rows, "streams": streams}

    def stream_len(self, job_type: str, priority: str = "normal") -> int:
        from orchestrator.jobs import Priority

        client = self.backend.make_redis()
        key = self.backend.keys.stream(job_type, Priority.from_label(priority))
        return int(client.xlen(key)) if client.exists(key) else 0

    def close(self) -> None:
        for worker, _ in self._workers:
            worker.stop()
        for _, thread in self._workers:
            thread.join(15)
        self.client.__exit__(None, None, None)
        self.services.close()
