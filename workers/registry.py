"""Handlers and their registry."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any, TypeVar

from orchestrator.errors import HandlerNotFound, InvalidRequest
from orchestrator.jobs import JOB_TYPE_PATTERN
from workers.context import JobContext

Handler = Callable[[JobContext], Any]
F = TypeVar("F", bound=Handler)

HANDLER_ATTR = "__orchestrator_job_type__"


def handler(job_type: str) -> Callable[[F], F]:
    """Mark a function as the handler of `job_type`. It receives a `JobContext` and returns
    a JSON-serialisable result; a raised exception fails the attempt.

    The mark is only an attribute: a worker finds marked functions in the modules it is told
    to import (`orchestrator worker --import my.handlers`), so no global registry exists.
    """
    _check_type(job_type)

    def mark(fn: F) -> F:
        setattr(fn, HANDLER_ATTR, job_type)
        return fn

    return mark


def _check_type(job_type: str) -> None:
    if not JOB_TYPE_PATTERN.match(job_type):
        raise InvalidRequest(f"job type {job_type!r} does not match {JOB_TYPE_PATTERN.pattern}")


class HandlerRegistry:
    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def register(self, job_type: str, fn: Handler) -> None:
        _check_type(job_type)
        self._handlers[job_type] = fn

    def add_module(self, module: ModuleType) -> int:
        """Register every `@handler` function of a module; returns how many."""
        found = 0
        for value in vars(module).values():
            job_type = getattr(value, HANDLER_ATTR, None)
            if isinstance(job_type, str) and callable(value):
                self.register(job_type, value)
                found += 1
        return found

    def import_modules(self, names: Iterable[str]) -> None:
        """Import handler modules by dotted name; the current directory is searched too (as
        `python -m` would), so `--import my_handlers` finds ./my_handlers.py."""
        if "" not in sys.path and os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        for name in names:
            try:
                module = importlib.import_module(name)
            except ImportError as exc:
                raise HandlerNotFound(
                    f"cannot import handler module {name!r}: {exc} "
                    f"(searched the current directory {os.getcwd()} and PYTHONPATH)"
                ) from exc
            if not self.add_module(module):
                raise HandlerNotFound(f"module {name} has no @handler functions")

    def get(self, job_type: str) -> Handler:
        try:
            return self._handlers[job_type]
        except KeyError:
            raise HandlerNotFound(f"no handler for job type {job_type!r}") from None

    @property
    def types(self) -> list[str]:
        return sorted(self._handlers)
