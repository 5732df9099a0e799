"""Settings from ORCH_* environment variables, and the embedded defaults."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from orchestrator.settings import Settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start every test from the defaults, whatever ORCH_* the shell running pytest has set."""
    for name in list(os.environ):
        if name.upper().startswith("ORCH_"):
            monkeypatch.delenv(name)


def test_settings__reads_orch_environment_variables(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ORCH_PORT", "9123")
    monkeypatch.setenv("ORCH_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("ORCH_REDIS_PREFIX", "ci:")
    monkeypatch.setenv("ORCH_MAX_BATCH_SIZE", "7")
    monkeypatch.setenv("ORCH_LOG_JSON", "true")
    settings = Settings()
    assert settings.port == 9123
    assert settings.data_dir == tmp_path
    assert settings.redis_prefix == "ci:"
    assert settings.max_batch_size == 7
    assert settings.log_json is True


def test_settings__unprefixed_variables_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "9999")
    assert Settings().port == 8014


def test_settings__out_of_range_value_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCH_PORT", "0")
    with pytest.raises(ValidationError):
        Settings()


def test_resolved_database_url__defaults_to_sqlite_file_in_data_dir(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert settings.resolved_database_url() == f"sqlite:///{tmp_path.resolve()}/orchestrator.db"


def test_resolved_database_url__relative_data_dir_is_made_absolute(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    url = Settings().resolved_database_url()
    assert url == f"sqlite:///{tmp_path.resolve()}/var/orchestrator.db"


def test_resolved_database_url__explicit_url_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "mysql+pymysql://orch:secret@db.internal:3306/orchestrator"
    monkeypatch.setenv("ORCH_DATABASE_URL", url)
    assert Settings().resolved_database_url() == url


def test_resolved_redis_url__embedded_is_unix_socket_in_data_dir(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert settings.redis_url == "embedded"
    assert settings.resolved_redis_url() == f"unix://{tmp_path.resolve()}/redis.sock"
    assert settings.embedded_redis_socket() == tmp_path.resolve() / "redis.sock"


def test_resolved_redis_url__explicit_url_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCH_REDIS_URL", "redis://cache.internal:6380/2")
    assert Settings().resolved_redis_url() == "redis://cache.internal:6380/2"


def test_settings__visibility_timeout_must_cover_two_heartbeats() -> None:
    with pytest.raises(ValidationError, match="twice heartbeat_interval_s"):
        Settings(heartbeat_interval_s=10, visibility_timeout_s=15)


def test_settings__lease_must_outlast_a_tick() -> None:
    with pytest.raises(ValidationError, match="leader_lease_s"):
        Settings(scheduler_interval_s=1, leader_lease_s=1)
