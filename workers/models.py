"""Warm models in a worker process: the `preloads` handler (`WarmModels`) and the model
affinity of jobs (`ModelAffinity`)."""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from orchestrator.clock import Clock, SystemClock
from orchestrator.errors import InvalidRequest, NotFound, OrchestratorError, Unavailable
from orchestrator.jobs import Dispatch, Job
from orchestrator.models import model_id_problem
from orchestrator.settings import Settings
from orchestrator.store import Store
from workers.context import JobCancelled, JobContext, JobInterrupted, JobTimeout

logger = logging.getLogger(__name__)

# `fn(model_id, folder) -> object`: loads a model's files; the object is what handlers get.
Loader = Callable[[str, Path], Any]

READ_CHUNK = 1 << 20
# How long a slot waits before putting back a delivery that `ModelAffinity` deferred, so
# that a worker alone on its stream does not spin on it.
DEFER_RETRY_S = 0.2


def read_files(model_id: str, folder: Path) -> int:
    """The default loader: reads every file of the model's folder (which leaves them in the
    page cache) and returns the number of bytes read."""
    del model_id
    total = 0
    for path in _files(folder):
        with path.open("rb") as f:
            while chunk := f.read(READ_CHUNK):
                total += len(chunk)
    return total


def load_loader(spec: str) -> Loader:
    """The loader named by the `model_loader` setting: 'module:function', or `read_files`
    when empty. Raises `InvalidRequest` when it cannot be found."""
    if not spec:
        return read_files
    module_name, sep, name = spec.partition(":")
    if not sep or not module_name or not name:
        raise InvalidRequest(f"ORCH_MODEL_LOADER {spec!r} is not 'module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InvalidRequest(f"ORCH_MODEL_LOADER: cannot import {module_name!r}: {exc}") from exc
    fn = getattr(module, name, None)
    if not callable(fn):
        raise InvalidRequest(f"ORCH_MODEL_LOADER: {module_name} has no function {name!r}")
    loader: Loader = fn
    return loader


@dataclass(frozen=True)
class LoadedModel:
    """A model loaded in this process: what its loader returned, and what it read."""

    model_id: str
    value: Any
    folder: Path
    files: int
    size_bytes: int
    loaded_at: datetime


class WarmModels:
    """The models this worker process has loaded, and its `preloads` handler.

    A handler that needs model M calls `ctx.models.get(M)` for the loaded object, or
    `ctx.models.load(M)` to load it here first if need be. Loads are recorded in the store
    as warm on this node (`orchestrator_warm_models`), which is what `GET /models` shows and
    what `ModelAffinity` steers jobs by.
    """

    def __init__(
        self,
        store: Store,
        settings: Settings,
        *,
        worker_id: str | None = None,
        clock: Clock | None = None,
        loader: Loader | None = None,
        node: str | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        # Set once the worker's id is known (before its first job): warm records name it.
        self.worker_id = worker_id
        self.clock = clock or SystemClock()
        self.loader = loader or load_loader(settings.model_loader)
        self.node = node or settings.resolved_node_name()
        self.root = settings.resolved_model_store()
        self._lock = threading.Lock()
        self._loaded: dict[str, LoadedModel] = {}
        self._loading: dict[str, threading.Lock] = {}

    # -- what handlers use -----------------------------------------------------------------

    def get(self, model_id: str) -> Any:
        """The loaded object of `model_id` (what the loader returned), or None when it is
        not loaded in this process."""
        with self._lock:
            loaded = self._loaded.get(model_id)
        return None if loaded is None else loaded.value

    def __contains__(self, model_id: object) -> bool:
        with self._lock:
            return model_id in self._loaded

    @property
    def loaded(self) -> list[str]:
        """The ids of the models loaded in this process."""
        with self._lock:
            return sorted(self._loaded)

    def load(self, model_id: str, *, refresh: bool = False) -> Any:
        """Load `model_id` here unless it already is (or again, with `refresh`), record it
        warm on this node, and return its object."""
        return self._load(model_id, refresh=refresh)[0].value

    def folder(self, model_id: str) -> Path:
        """The model's folder, `<model_store>/<model_id>`; raises `InvalidRequest` for a bad
        id, `NotFound` when the folder is missing or holds no files."""
        problem = model_id_problem(model_id) if isinstance(model_id, str) else "not a string"
        if problem:
            raise InvalidRequest(f"model {str(model_id)[:80]!r}: {problem}")
        path = self.root / model_id
        if not path.is_dir():
            raise NotFound(f"model {model_id}: no folder {path} in the model store")
        if not any(p.is_file() for p in path.rglob("*")):
            raise NotFound(f"model {model_id}: its folder {path} holds no files")
        return path

    # -- the preload handler ---------------------------------------------------------------

    def preload(self, ctx: JobContext) -> dict[str, Any]:
        """The handler of `preloads` jobs (payload `{"model_id", "refresh"}`): check the
        model's folder, load it through the loader, keep it, and record it warm on this
        node. A failure is recorded on the preload and raised, so the job retries or is
        dead-lettered."""
        payload = ctx.payload if isinstance(ctx.payload, dict) else {}
        model_id = payload.get("model_id")
        if not isinstance(model_id, str) or model_id_problem(model_id):
            raise InvalidRequest(f"a preload needs a valid payload.model_id, not {model_id!r}")
        refresh = payload.get("refresh") is True
        started = time.monotonic()
        try:
            path = self.folder(model_id)
            if not self.store.mark_preload_loading(model_id, ctx.id, self.node, self.clock.now()):
                logger.info(
                    "model %s: a newer preload request exists; loading anyway",
                    model_id,
                    extra={"event": "preload_superseded", "job_id": ctx.id, "attempt": ctx.attempt},
                )
            loaded, fresh = self._load(model_id, refresh=refresh, folder=path)
            self.store.mark_preload_done(model_id, ctx.id, self.node, self.clock.now())
        except (Exception, JobInterrupted) as exc:
            self._record_failure(model_id, ctx, exc)
            raise
        logger.info(
            "model %s warm on %s (%d bytes, %s)",
            model_id,
            self.node,
            loaded.size_bytes,
            "loaded" if fresh else "already loaded",
            extra={
                "event": "model_preloaded",
                "job_id": ctx.id,
                "attempt": ctx.attempt,
                "model_id": model_id,
            },
        )
        return {
            "model_id": model_id,
            "node": self.node,
            "size_bytes": loaded.size_bytes,
            "files": loaded.files,
            "loaded": fresh,
            "load_s": round(time.monotonic() - started, 3),
        }

    def forget(self) -> int:
        """Unload everything and remove this worker's warm records (a worker stopping);
        returns how many records went. Best effort: a database outage only logs."""
        with self._lock:
            self._loaded.clear()
        if self.worker_id is None:
            return 0
        try:
            return self.store.forget_warm(node=self.node, worker_ids=[self.worker_id])
        except OrchestratorError as exc:
            logger.warning(
                "could not remove the warm models of %s: %s",
                self.worker_id,
                exc,
                extra={"event": "warm_forget_failed"},
            )
            return 0

    def carry_out_evictions(self, in_use: set[str | None]) -> list[str]:
        """Unload the models an eviction asks this node to drop (`POST /models/evict`),
        except those a job of this process runs with now (`in_use`): they wait for the next
        heartbeat. Returns the models unloaded. Best effort: an outage only logs."""
        done: list[str] = []
        try:
            for model_id in self.store.pending_evictions(self.node):
                if model_id in in_use:
                    continue  # a job of ours runs with it: at a later heartbeat
                with self._lock:
                    gate = self._loading.setdefault(model_id, threading.Lock())
                # Under the model's load gate: a load racing the eviction waits for it, so
                # nothing ever sees a half-unloaded model.
                with gate:
                    with self._lock:
                        held = self._loaded.pop(model_id, None) is not None
                    if held:
                        self.store.finish_eviction(self.node, model_id)
                    # Not loaded here: nothing to unload. Finish it unless another process
                    # on this node holds the warm record (that one unloads it), so a row
                    # nobody would carry out does not outlive its model.
                    elif not self.store.finish_eviction(
                        self.node, model_id, not_held_by=self.worker_id or ""
                    ):
                        continue
                done.append(model_id)
                logger.info(
                    "model %s evicted from %s",
                    model_id,
                    self.node,
                    extra={"event": "model_evicted", "model_id": model_id},
                )
        except OrchestratorError as exc:
            logger.warning(
                "could not carry out model evictions: %s",
                exc,
                extra={"event": "model_evict_failed"},
            )
        return done

    # -- internals -------------------------------------------------------------------------

    def _load(
        self, model_id: str, *, refresh: bool, folder: Path | None = None
    ) -> tuple[LoadedModel, bool]:
        with self._lock:
            gate = self._loading.setdefault(model_id, threading.Lock())
        # One load of a model at a time: a second request waits and reuses the first's.
        with gate:
            with self._lock:
                loaded = self._loaded.get(model_id)
            fresh = loaded is None or refresh
            if loaded is None or refresh:
                path = folder or self.folder(model_id)
                files = list(_files(path))
                size = sum(f.stat().st_size for f in files)
                value = self.loader(model_id, path)
                loaded = LoadedModel(model_id, value, path, len(files), size, self.clock.now())
                with self._lock:
                    self._loaded[model_id] = loaded
            self.store.record_warm(
                self.node, model_id, self.worker_id, loaded.size_bytes, self.clock.now()
            )
        return loaded, fresh

    def _record_failure(self, model_id: str, ctx: JobContext, exc: BaseException) -> None:
        error = _describe(exc, ctx)
        logger.warning(
            "model %s: preload failed: %s",
            model_id,
            error,
            extra={
                "event": "preload_failed",
                "job_id": ctx.id,
                "attempt": ctx.attempt,
                "model_id": model_id,
            },
        )
        try:
            self.store.mark_preload_failed(model_id, ctx.id, self.node, error, self.clock.now())
        except OrchestratorError as db_exc:
            # The job's own failure is still recorded; the status reads it from there.
            logger.warning(
                "model %s: could not record the failure: %s",
                model_id,
                db_exc,
                extra={
                    "event": "preload_failure_unrecorded",
                    "job_id": ctx.id,
                    "attempt": ctx.attempt,
                },
            )


class ModelAffinity:
    """Whether a worker should leave a job to a worker where the job's model is warm.

    A job for model M (its `gpu.model_id`) is deferred when M is not warm on this node, is
    warm on another node where a live worker serves the job's type, and the job became
    available less than `model_affinity_s` ago: past that, any worker takes it, so nothing
    waits forever for a busy or vanished warm node.
    """

    def __init__(
        self,
        store: Store,
        settings: Settings,
        *,
        node: str | None = None,
        warm: WarmModels | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.node = node or settings.resolved_node_name()
        self.warm = warm

    def should_defer(self, job: Job, now: datetime) -> bool:
        """True when this worker should put `job` back unclaimed for a warmer one."""
        model_id = job.gpu.model_id if job.gpu else None
        return self._should_defer(job.id, job.type, model_id, job.available_at, now)

    def should_defer_dispatch(self, dispatch: Dispatch, now: datetime) -> bool:
        """`should_defer` for a delivery not yet claimed: reads only the job's type, model
        and `available_at` (no payload)."""
        if self.settings.model_affinity_s <= 0:
            return False
        try:
            demand = self.store.model_demand(dispatch.job_id)
        except Unavailable:
            return False  # the claim that follows will meet the outage and handle it
        if demand is None:
            return False
        return self._should_defer(
            demand.job_id, demand.type, demand.model_id, demand.available_at, now
        )

    def _should_defer(
        self,
        job_id: str,
        job_type: str,
        model_id: str | None,
        available_at: datetime,
        now: datetime,
    ) -> bool:
        window = self.settings.model_affinity_s
        if not model_id or window <= 0:
            return False
        # Measured from `available_at`, which a deferral (the message put back, the row
        # untouched) does not move: the window ends however often the job is deferred.
        if (now - available_at).total_seconds() >= window:
            return False
        if self.warm is not None and model_id in self.warm:
            return False
        live_after = now - timedelta(seconds=self.settings.visibility_timeout_s)
        try:
            placement = self.store.model_placement(model_id, job_type, live_after)
        except Unavailable:
            return False
        if self.node in placement.warm_on:
            return False
        elsewhere = placement.serving - {self.node}
        if elsewhere:
            logger.debug(
                "job %s: model %s is warm on %s; leaving it to them",
                job_id,
                model_id,
                ",".join(sorted(elsewhere)),
                extra={"event": "affinity_deferred", "job_id": job_id, "model_id": model_id},
            )
        return bool(elsewhere)


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _describe(exc: BaseException, ctx: JobContext) -> str:
    if isinstance(exc, JobTimeout):
        return f"timed out after {ctx.timeout_s}s"
    if isinstance(exc, JobCancelled):
        return "interrupted: the preload job was cancelled or given back"
    if isinstance(exc, OrchestratorError):
        return exc.message
    text = f"{type(exc).__name__}: {exc}"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
