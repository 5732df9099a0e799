"""Handler marking and the handler registry."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import pytest

from orchestrator.errors import HandlerNotFound, InvalidRequest
from workers.context import JobContext
from workers.registry import HANDLER_ATTR, HandlerRegistry, handler


def _module_with_handlers(name: str) -> types.ModuleType:
    module = types.ModuleType(name)

    @handler("embed_text")
    def embed(ctx: JobContext) -> Any:
        return "embedded"

    @handler("preloads")
    def preload(ctx: JobContext) -> Any:
        return "preloaded"

    def helper(ctx: JobContext) -> Any:  # not marked: must not be registered
        return "helper"

    module.embed = embed  # type: ignore[attr-defined]
    module.preload = preload  # type: ignore[attr-defined]
    module.helper = helper  # type: ignore[attr-defined]
    module.CONSTANT = "embed_text"  # type: ignore[attr-defined]
    return module


def test_handler__marks_function_with_its_job_type_and_returns_it_unchanged() -> None:
    def run(ctx: JobContext) -> Any:
        return 1

    marked = handler("inference_jobs")(run)
    assert marked is run
    assert getattr(run, HANDLER_ATTR) == "inference_jobs"


@pytest.mark.parametrize("job_type", ["Inference", "bad-type", "a:b", "", "9lives"])
def test_handler__bad_job_type_raises_invalid_request(job_type: str) -> None:
    with pytest.raises(InvalidRequest):
        handler(job_type)


def test_register__bad_job_type_raises_invalid_request() -> None:
    registry = HandlerRegistry()
    with pytest.raises(InvalidRequest):
        registry.register("Not-Valid", lambda ctx: None)
    assert registry.types == []


def test_add_module__registers_only_marked_functions() -> None:
    registry = HandlerRegistry()
    module = _module_with_handlers("my_handlers")
    assert registry.add_module(module) == 2
    assert registry.types == ["embed_text", "preloads"]
    assert registry.get("embed_text") is module.embed
    assert registry.get("preloads") is module.preload


def test_get__unknown_type_raises_handler_not_found() -> None:
    registry = HandlerRegistry()
    registry.add_module(_module_with_handlers("my_handlers"))
    with pytest.raises(HandlerNotFound):
        registry.get("transcode")


def test_import_modules__module_without_handlers_raises_handler_not_found(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    empty = types.ModuleType("orch_test_empty_handlers")
    empty.helper = lambda ctx: None  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, empty.__name__, empty)
    registry = HandlerRegistry()
    with pytest.raises(HandlerNotFound):
        registry.import_modules([empty.__name__])


def test_import_modules__registers_handlers_of_every_named_module(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    module = _module_with_handlers("orch_test_handlers")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    registry = HandlerRegistry()
    registry.import_modules([module.__name__, "workers.builtin"])
    assert registry.types == ["echo", "embed_text", "fail", "preloads", "sleep"]


def test_import_modules__missing_module_is_one_clear_error() -> None:
    with pytest.raises(HandlerNotFound, match="cannot import handler module") as caught:
        HandlerRegistry().import_modules(["orch_test_no_such_module_anywhere"])
    assert isinstance(caught.value.__cause__, ImportError)


def test_import_modules__finds_a_module_in_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "orch_test_cwd_handlers.py").write_text(
        "from workers import handler\n\n@handler('cwd_job')\ndef run(ctx):\n    return 1\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    registry = HandlerRegistry()
    registry.import_modules(["orch_test_cwd_handlers"])
    assert registry.types == ["cwd_job"]
