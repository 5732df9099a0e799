"""Fixtures: every scenario runs on SQLite + fakeredis and on real MariaDB + Redis."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.integration.backends import Backend, real_backend, sqlite_backend
from tests.integration.harness import System


@pytest.fixture(params=["sqlite", "mariadb"])
def backend_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[object]:
    """Makes the backend of this parameter, with optional setting overrides."""
    with ExitStack() as stack:

        def make(**overrides: object) -> Backend:
            cm = sqlite_backend if request.param == "sqlite" else real_backend
            return stack.enter_context(cm(tmp_path, **overrides))

        yield make


@pytest.fixture
def backend(backend_factory: object) -> Backend:
    return backend_factory()  # type: ignore[operator, no-any-return]


@pytest.fixture
def system(backend: Backend) -> Iterator[System]:
    sys_ = System(backend)
    try:
        yield sys_
    finally:
        sys_.close()
