"""Model preloads on a SQLite store with a fake clock: the loader plugin, the model folder,
refresh, the preload rows' fencing, and the affinity rules."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from orchestrator.clock import FakeClock
from orchestrator.errors import InvalidRequest, NotFound
from orchestrator.ids import new_job_id
from orchestrator.jobs import Dispatch, GpuNeeds, Job, JobSpec, JobStatus, Priority
from orchestrator.models import (
    ModelPreload,
    PreloadStatus,
    check_model_ids,
    model_id_problem,
)
from orchestrator.settings import Settings
from orchestrator.store import SqlStore
from orchestrator.store.dialect import upsert
from orchestrator.store.tables import workers
from workers.context import JobContext, JobTimeout
from workers.models import ModelAffinity, WarmModels, load_loader, read_files

from .store_helpers import SpecFactory

NODE = "node-a"
OTHER = "node-b"
P = PreloadStatus

# What `loaded_by_plugin` saw, to show the plugin was called (and how often).
plugin_calls: list[tuple[str, Path]] = []


def loaded_by_plugin(model_id: str, folder: Path) -> dict[str, Any]:
    """A loader named in a `model_loader` setting ("tests.unit.test_models:loaded_by_plugin")."""
    plugin_calls.append((model_id, folder))
    return {"model": model_id, "files": sorted(p.name for p in folder.iterdir())}


@pytest.fixture
def model_settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, model_store=tmp_path / "models", node_name=NODE)


def add_model(settings: Settings, model_id: str, files: dict[str, bytes] | None = None) -> Path:
    folder = settings.resolved_model_store() / model_id
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in (files if files is not None else {"weights.bin": b"w" * 100}).items():
        (folder / name).write_bytes(data)
    return folder


def context(model_id: str, job_id: str | None = None, refresh: bool = False) -> JobContext:
    return JobContext(
        job_id=job_id or new_job_id(),
        job_type="preloads",
        payload={"model_id": model_id, "refresh": refresh},
        attempt=1,
        max_attempts=3,
        timeout_s=60.0,
        report_progress=lambda _value: None,
    )


def preload_of(store: SqlStore, model_id: str) -> ModelPreload:
    [preload] = store.model_overview([model_id]).preloads
    return preload


@pytest.fixture
def warm(store: SqlStore, clock: FakeClock, model_settings: Settings) -> WarmModels:
    return WarmModels(store, model_settings, worker_id="worker-a", clock=clock)


# -- model ids -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model_id", ["llama-3-8b", "meta-llama/Llama-3-8B", "a", "org/v1.2_x", "x" * 255]
)
def test_model_id_problem__accepts_folder_names(model_id: str) -> None:
    assert model_id_problem(model_id) is None


@pytest.mark.parametrize(
    "model_id",
    ["", "/etc/passwd", "../secrets", "a/../b", "a..b", "a//b", "a/", ".hidden", "a b", "a\\b",
     "x" * 256, "C:model", "a/.git"],
)  # fmt: skip
def test_model_id_problem__refuses_paths_out_of_the_store(model_id: str) -> None:
    assert model_id_problem(model_id) is not None


def test_check_model_ids__refuses_duplicates_empty_and_too_many() -> None:
    assert check_model_ids(["a", "b"]) == ["a", "b"]
    with pytest.raises(InvalidRequest, match="twice"):
        check_model_ids(["a", "a"])
    with pytest.raises(InvalidRequest, match="1 to 100"):
        check_model_ids([])
    with pytest.raises(InvalidRequest, match="1 to 100"):
        check_model_ids([f"m{i}" for i in range(101)])


# -- loaders ---------------------------------------------------------------------------------


def test_read_files__reads_every_file_and_returns_the_bytes(model_settings: Settings) -> None:
    folder = add_model(model_settings, "m", {"a.bin": b"x" * 3000, "b.json": b"{}"})
    (folder / "sub").mkdir()
    (folder / "sub" / "c.bin").write_bytes(b"y" * 5)
    assert read_files("m", folder) == 3007


def test_load_loader__finds_a_plugin_by_module_and_function() -> None:
    assert load_loader("") is read_files
    assert load_loader("tests.unit.test_models:loaded_by_plugin") is loaded_by_plugin


@pytest.mark.parametrize(
    "spec", ["no_colon", "tests.unit.test_models:", "no.such.module:fn", "tests.unit:nothing"]
)
def test_load_loader__a_bad_spec_fails_at_once(spec: str) -> None:
    with pytest.raises(InvalidRequest, match="ORCH_MODEL_LOADER"):
        load_loader(spec)


def test_preload__loads_through_the_plugin_and_keeps_the_object(
    store: SqlStore, clock: FakeClock, model_settings: Settings
) -> None:
    settings = model_settings.model_copy(
        update={"model_loader": "tests.unit.test_models:loaded_by_plugin"}
    )
    add_model(settings, "org/model", {"w.bin": b"1234", "config.json": b"{}"})
    models = WarmModels(store, settings, worker_id="worker-a", clock=clock)
    plugin_calls.clear()
    ctx = context("org/model")

    result = models.preload(ctx)

    folder = settings.resolved_model_store() / "org/model"
    assert plugin_calls == [("org/model", folder)]
    assert models.get("org/model") == {"model": "org/model", "files": ["config.json", "w.bin"]}
    assert models.loaded == ["org/model"]
    assert result == {
        "model_id": "org/model",
        "node": NODE,
        "size_bytes": 6,
        "files": 2,
        "loaded": True,
        "load_s": result["load_s"],
    }
    preload = preload_of(store, "org/model")
    assert (preload.status, preload.node, preload.job_id) == (P.DONE, NODE, ctx.id)
    [warm] = store.model_overview(["org/model"]).warm
    assert (warm.node, warm.worker_id, warm.size_bytes) == (NODE, "worker-a", 6)


def test_preload__default_loader_returns_the_bytes_read(
    warm: WarmModels, model_settings: Settings
) -> None:
    add_model(model_settings, "m", {"w.bin": b"z" * 42})
    warm.preload(context("m"))
    assert warm.get("m") == 42


# -- bad folders -----------------------------------------------------------------------------


def test_preload__missing_folder_fails_the_preload_with_a_clear_error(
    store: SqlStore, warm: WarmModels
) -> None:
    ctx = context("absent")
    with pytest.raises(NotFound, match=r"no folder .*absent in the model store"):
        warm.preload(ctx)
    preload = preload_of(store, "absent")
    assert preload.status is P.FAILED
    assert preload.error is not None and "no folder" in preload.error
    assert preload.job_id == ctx.id
    assert warm.get("absent") is None
    assert store.model_overview(["absent"]).warm == []


def test_preload__empty_folder_fails(
    store: SqlStore, warm: WarmModels, model_settings: Settings
) -> None:
    (model_settings.resolved_model_store() / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(NotFound, match="holds no files"):
        warm.preload(context("empty"))
    assert preload_of(store, "empty").status is P.FAILED


def test_preload__a_loader_error_is_recorded_and_raised(
    store: SqlStore, clock: FakeClock, model_settings: Settings
) -> None:
    def broken(model_id: str, folder: Path) -> Any:
        raise OSError("disk on fire")

    add_model(model_settings, "m")
    models = WarmModels(store, model_settings, clock=clock, loader=broken)
    with pytest.raises(OSError, match="disk on fire"):
        models.preload(context("m"))
    preload = preload_of(store, "m")
    assert (preload.status, preload.error) == (P.FAILED, "OSError: disk on fire")


def test_preload__a_timeout_is_recorded_as_a_failure(
    store: SqlStore, clock: FakeClock, model_settings: Settings
) -> None:
    def slow(model_id: str, folder: Path) -> Any:
        raise JobTimeout()

    add_model(model_settings, "m")
    models = WarmModels(store, model_settings, clock=clock, loader=slow)
    with pytest.raises(JobTimeout):
        models.preload(context("m"))
    assert preload_of(store, "m").error == "timed out after 60.0s"


def test_preload__a_bad_payload_model_id_is_refused(warm: WarmModels) -> None:
    ctx = context("../etc")
    with pytest.raises(InvalidRequest, match=r"payload\.model_id"):
        warm.preload(ctx)


# -- refresh ---------------------------------------------------------------------------------


def test_preload__without_refresh_reuses_what_is_loaded(
    store: SqlStore, clock: FakeClock, model_settings: Settings
) -> None:
    calls: list[str] = []

    def counting(model_id: str, folder: Path) -> int:
        calls.append(model_id)
        return len(calls)

    add_model(model_settings, "m")
    models = WarmModels(store, model_settings, clock=clock, loader=counting)
    assert models.preload(context("m"))["loaded"] is True
    clock.advance(5)
    second = context("m")
    assert models.preload(second)["loaded"] is False
    assert calls == ["m"]
    assert models.get("m") == 1
    assert preload_of(store, "m").job_id == second.id
    [row] = store.model_overview(["m"]).warm
    assert row.loaded_at == clock.now()  # still warm, as of now

    assert models.preload(context("m", refresh=True))["loaded"] is True
    assert calls == ["m", "m"]
    assert models.get("m") == 2


def test_forget__unloads_and_removes_this_workers_records(
    store: SqlStore, clock: FakeClock, warm: WarmModels, model_settings: Settings
) -> None:
    add_model(model_settings, "m1")
    add_model(model_settings, "m2")
    warm.preload(context("m1"))
    warm.preload(context("m2"))
    store.record_warm(OTHER, "m1", "worker-b", 1, clock.now())
    assert warm.forget() == 2
    assert warm.loaded == []
    assert [(w.node, w.model_id) for w in store.model_overview().warm] == [(OTHER, "m1")]


def test_forget_warm__needs_a_filter(store: SqlStore) -> None:
    with pytest.raises(InvalidRequest):
        store.forget_warm()
    assert store.forget_warm(worker_ids=[]) == 0


# -- the preload row: newest request wins ----------------------------------------------------


def test_mark_preload__an_older_job_cannot_overwrite_a_newer_request(
    store: SqlStore, clock: FakeClock
) -> None:
    old, new = sorted([new_job_id(), new_job_id()])  # time-ordered (to the millisecond)
    store.queue_preloads([("m", old)], clock.now())
    assert store.mark_preload_loading("m", old, NODE, clock.now())
    store.queue_preloads([("m", new)], clock.now())  # a refresh
    assert not store.mark_preload_done("m", old, NODE, clock.now())
    assert not store.mark_preload_failed("m", old, NODE, "late", clock.now())
    assert (preload_of(store, "m").status, preload_of(store, "m").job_id) == (P.QUEUED, new)
    store.queue_preloads([("m", old)], clock.now())  # a delayed record of the old request
    assert preload_of(store, "m").job_id == new


def test_mark_preload__a_worker_ahead_of_the_api_keeps_its_progress(
    store: SqlStore, clock: FakeClock
) -> None:
    # The job is published before the API records it as queued: its worker may finish first.
    job_id = new_job_id()
    assert store.mark_preload_loading("m", job_id, NODE, clock.now())
    assert store.mark_preload_done("m", job_id, NODE, clock.now())
    store.queue_preloads([("m", job_id)], clock.now())
    assert preload_of(store, "m").status is P.DONE


def test_mark_preload__a_late_failure_does_not_undo_a_load_that_succeeded(
    store: SqlStore, clock: FakeClock
) -> None:
    job_id = new_job_id()
    store.queue_preloads([("m", job_id)], clock.now())
    assert store.mark_preload_done("m", job_id, NODE, clock.now())
    # A reclaimed attempt of the same job, still running somewhere.
    assert not store.mark_preload_failed("m", job_id, OTHER, "worker lost", clock.now())
    assert not store.mark_preload_loading("m", job_id, OTHER, clock.now())
    assert preload_of(store, "m").status is P.DONE


def test_mark_preload__a_retry_after_a_failure_loads_again(
    store: SqlStore, clock: FakeClock
) -> None:
    job_id = new_job_id()
    store.queue_preloads([("m", job_id)], clock.now())
    assert store.mark_preload_failed("m", job_id, NODE, "flaky disk", clock.now())
    assert store.mark_preload_loading("m", job_id, NODE, clock.now())
    preload = preload_of(store, "m")
    assert (preload.status, preload.error) == (P.LOADING, None)


# -- the preload's state, read with its job's ------------------------------------------------


def preload_row(status: PreloadStatus, job_status: JobStatus | None) -> ModelPreload:
    at = FakeClock().now()
    return ModelPreload("m", status, "job", NODE, "boom" if status is P.FAILED else None, at, at,
                        job_status, "job error")  # fmt: skip


@pytest.mark.parametrize(
    ("status", "job_status", "state"),
    [
        (P.QUEUED, JobStatus.PENDING, P.QUEUED),
        (P.LOADING, JobStatus.RUNNING, P.LOADING),
        (P.DONE, JobStatus.DONE, P.DONE),
        (P.FAILED, JobStatus.FAILED, P.QUEUED),  # the job retries
        (P.FAILED, JobStatus.DEAD_LETTER, P.FAILED),
        (P.LOADING, JobStatus.DEAD_LETTER, P.FAILED),  # its worker was lost, last attempt
        (P.QUEUED, JobStatus.CANCELLED, P.FAILED),
        (P.LOADING, None, P.FAILED),  # the job is gone
    ],
)
def test_preload_state__follows_the_job(
    status: PreloadStatus, job_status: JobStatus | None, state: PreloadStatus
) -> None:
    assert preload_row(status, job_status).state is state


def test_preload_reason__falls_back_to_the_jobs_error() -> None:
    assert preload_row(P.LOADING, JobStatus.DEAD_LETTER).reason == "job error"
    assert preload_row(P.FAILED, JobStatus.DEAD_LETTER).reason == "boom"
    assert preload_row(P.QUEUED, JobStatus.PENDING).reason is None


# -- affinity --------------------------------------------------------------------------------


AddWorker = Callable[..., None]


@pytest.fixture
def add_worker(store: SqlStore, clock: FakeClock) -> AddWorker:
    """A registered worker row, as the worker registration writes it."""

    def add(
        worker_id: str,
        node: str,
        types: tuple[str, ...] = ("inference_jobs",),
        status: str = "running",
        age_s: float = 0.0,
    ) -> None:
        row = {
            "id": worker_id,
            "node": node,
            "pool": None,
            "pid": 1,
            "job_types": '["' + '","'.join(types) + '"]',
            "concurrency": 1,
            "status": status,
            "current_jobs": "[]",
            "started_at": clock.now(),
            "heartbeat_at": clock.now() - timedelta(seconds=age_s),
            "stopped_at": None,
        }
        with store.engine.begin() as conn:
            conn.execute(upsert(store.engine, workers, row, key="id"))

    return add


@pytest.fixture
def model_job(store: SqlStore, clock: FakeClock, make_spec: SpecFactory) -> Callable[..., Job]:
    def submit(model_id: str | None = "m", type: str = "inference_jobs") -> Job:
        spec: JobSpec = make_spec(type=type)
        if model_id is not None:
            spec = JobSpec(**{**spec.__dict__, "gpu": GpuNeeds(1000, 1, model_id)})
        [submitted] = store.submit_jobs([spec], clock.now())
        return submitted.job

    return submit


@pytest.fixture
def affinity(store: SqlStore, model_settings: Settings) -> ModelAffinity:
    return ModelAffinity(store, model_settings)  # model_affinity_s: 5 s by default


def test_should_defer__when_the_model_is_warm_on_a_live_node_serving_the_type(
    store: SqlStore,
    clock: FakeClock,
    affinity: ModelAffinity,
    add_worker: AddWorker,
    model_job: Callable[..., Job],
) -> None:
    job = model_job("m")
    assert not affinity.should_defer(job, clock.now())  # warm nowhere
    store.record_warm(OTHER, "m", "worker-b", 10, clock.now())
    assert not affinity.should_defer(job, clock.now())  # no live worker there yet
    add_worker("worker-b", OTHER)
    assert affinity.should_defer(job, clock.now())
    dispatch = Dispatch(job.id, job.type, Priority.NORMAL, 1)
    assert affinity.should_defer_dispatch(dispatch, clock.now())


def test_should_defer__not_past_the_affinity_window(
    store: SqlStore,
    clock: FakeClock,
    affinity: ModelAffinity,
    add_worker: AddWorker,
    model_job: Callable[..., Job],
) -> None:
    job = model_job("m")
    store.record_warm(OTHER, "m", "worker-b", 10, clock.now())
    add_worker("worker-b", OTHER)
    clock.advance(4.9)
    add_worker("worker-b", OTHER)  # heartbeats go on
    assert affinity.should_defer(job, clock.now())
    clock.advance(0.1)
    dispatch = Dispatch(job.id, job.type, Priority.NORMAL, 1)
    assert not affinity.should_defer(job, clock.now())
    assert not affinity.should_defer_dispatch(dispatch, clock.now())


def test_should_defer__not_when_warm_here_too(
    store: SqlStore,
    clock: FakeClock,
    affinity: ModelAffinity,
    add_worker: AddWorker,
    model_job: Callable[..., Job],
) -> None:
    job = model_job("m")
    store.record_warm(OTHER, "m", "worker-b", 10, clock.now())
    add_worker("worker-b", OTHER)
    store.record_warm(NODE, "m", "worker-a", 10, clock.now())
    assert not affinity.should_defer(job, clock.now())


def test_should_defer__not_when_loaded_in_this_process(
    store: SqlStore,
    clock: FakeClock,
    model_settings: Settings,
    warm: WarmModels,
    add_worker: AddWorker,
    model_job: Callable[..., Job],
) -> None:
    add_model(model_settings, "m")
    warm.load("m")
    store.forget_warm(node=NODE)  # its record lost, say: what this process holds still counts
    store.record_warm(OTHER, "m", "worker-b", 10, clock.now())
    add_worker("worker-b", OTHER)
    affinity = ModelAffinity(store, model_settings, warm=warm)
    assert not affinity.should_defer(model_job("m"), clock.now())


@pytest.mark.parametrize(
    ("types", "status", "age_s"),
    [
        (("other_type",), "running", 0.0),  # it does not serve the job's type
        (("inference_jobs",), "draining", 0.0),  # it takes no new jobs
        (("inference_jobs",), "stopped", 0.0),
        (("inference_jobs",), "running", 31.0),  # no heartbeat for a visibility timeout
    ],
)
def test_should_defer__not_for_a_node_that_cannot_take_it(
    store: SqlStore,
    clock: FakeClock,
    affinity: ModelAffinity,
    add_worker: AddWorker,
    model_job: Callable[..., Job],
    types: tuple[str, ...],
    status: str,
    age_s: float,
) -> None:
    store.record_warm(OTHER, "m", "worker-b", 10, clock.now())
    add_worker("worker-b", OTHER, types, status, age_s)
    assert not affinity.should_defer(model_job("m"), clock.now())


def test_should_defer__not_for_a_job_without_a_model_or_with_affinity_off(
    store: SqlStore,
    clock: FakeClock,
    model_settings: Settings,
    affinity: ModelAffinity,
    add_worker: AddWorker,
    model_job: Callable[..., Job],
) -> None:
    store.record_warm(OTHER, "m", "worker-b", 10, clock.now())
    add_worker("worker-b", OTHER)
    plain = model_job(None)
    assert not affinity.should_defer(plain, clock.now())
    assert not affinity.should_defer_dispatch(
        Dispatch(plain.id, plain.type, Priority.NORMAL, 1), clock.now()
    )
    off = ModelAffinity(store, model_settings.model_copy(update={"model_affinity_s": 0}))
    assert not off.should_defer(model_job("m"), clock.now())
    missing = Dispatch(new_job_id(), "inference_jobs", Priority.NORMAL, 1)
    assert not affinity.should_defer_dispatch(missing, clock.now())


def test_model_placement__reads_only_live_workers_serving_the_type(
    store: SqlStore, clock: FakeClock, add_worker: AddWorker
) -> None:
    store.record_warm(OTHER, "m", "worker-b", 10, clock.now())
    store.record_warm("node-c", "m", "worker-c", 10, clock.now())
    add_worker("worker-b", OTHER, ("preloads", "inference_jobs"))
    add_worker("worker-c", "node-c", ("preloads",))
    live_after = clock.now() - timedelta(seconds=30)
    placement = store.model_placement("m", "inference_jobs", live_after)
    assert placement.warm_on == {OTHER, "node-c"}
    assert placement.serving == {OTHER}
    with store.engine.begin() as conn:
        conn.execute(sa.update(workers).values(job_types="not json"))
    assert store.model_placement("m", "inference_jobs", live_after).serving == frozenset()


# -- the CLI ---------------------------------------------------------------------------------


class FakeApi:
    """Stands in for `cli_support.api`: answers from a script, records the calls."""

    def __init__(self, answers: list[Any]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, str, Any]] = []

    def __call__(self, settings: Settings, method: str, path: str, body: Any = None) -> Any:
        self.calls.append((method, path, body))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def status_answer(in_progress: list[str], failed: dict[str, str]) -> dict[str, Any]:
    models: list[dict[str, Any]] = [
        {"model_id": m, "status": "loading", "node": NODE, "error": None, "warm_on": []}
        for m in in_progress
    ] + [
        {"model_id": m, "status": "failed", "node": NODE, "error": e, "warm_on": []}
        for m, e in failed.items()
    ]
    return {
        "in_progress": in_progress,
        "summary": {"total": len(models), "done": 0, "failed": len(failed)},
        "errors": failed,
        "all_ready": False,
        "models": models,
    }


def run_cli(monkeypatch: pytest.MonkeyPatch, answers: list[Any], *argv: str) -> tuple[FakeApi, int]:
    """`orchestrator *argv` against a scripted API; the calls it made, and its exit code."""
    from orchestrator import cli, cli_models

    fake = FakeApi(answers)
    monkeypatch.setattr(cli_models, "api", fake)
    monkeypatch.setattr(cli_models, "POLL_S", 0.0)
    return fake, cli.main(list(argv))


def test_cli_models_preload__prints_queued_and_skipped(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    answer = {
        "queued": [{"model_id": "m1", "job_id": "j1"}],
        "skipped": [{"model_id": "m2", "reason": "warm", "status": "done", "warm_on": [NODE]}],
    }
    fake, code = run_cli(monkeypatch, [answer], "models", "preload", "m1", "m2", "--refresh")
    assert fake.calls == [("POST", "/models/preload", {"models": ["m1", "m2"], "refresh": True})]
    out = capsys.readouterr().out
    assert "queued   m1  (job j1)" in out
    assert "skipped  m2  (warm on node-a" in out
    assert code == 0


def test_cli_models_preload_wait__polls_and_fails_when_a_model_failed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    queued = {"queued": [{"model_id": "org/m", "job_id": "j1"}], "skipped": []}
    answers = [queued, status_answer(["org/m"], {}), status_answer([], {"org/m": "no folder"})]
    fake, code = run_cli(monkeypatch, answers, "models", "preload", "org/m", "--wait")
    assert [c[1] for c in fake.calls[1:]] == ["/models/status?model=org%2Fm"] * 2
    captured = capsys.readouterr()
    assert "loading 1 of 1: org/m" in captured.err
    assert "1 models: 0 done, 1 failed" in captured.out
    assert "no folder" in captured.out
    assert code == 1


def test_cli_models_status__an_api_error_is_one_line_on_stderr(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from orchestrator.errors import OrchestratorError

    _, code = run_cli(monkeypatch, [OrchestratorError("503 database error")], "models", "status")
    captured = capsys.readouterr()
    assert captured.err == "error: 503 database error\n"
    assert captured.out == ""
    assert code == 1


def test_cli_models_status__json_and_table(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    answer = status_answer(["a"], {"b": "boom"})
    run_cli(monkeypatch, [answer], "models", "status", "--json")
    assert json.loads(capsys.readouterr().out) == answer
    run_cli(monkeypatch, [answer], "models", "status")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "2 models: 0 done, 1 failed, 1 in progress; all ready: no"
    assert lines[1].split() == ["MODEL", "STATUS", "NODE", "WARM", "ON", "ERROR"]
    assert lines[3].split() == ["b", "failed", NODE, "-", "boom"]
