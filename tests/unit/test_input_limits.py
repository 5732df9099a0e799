"""Input limits: nonsense settings are refused at start, and the checks say which limit."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from orchestrator.errors import InvalidRequest
from orchestrator.input_limits import InputLimits
from orchestrator.settings import Settings


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        ({"job_type_pattern": "("}, "not a regular expression"),
        ({"job_type_pattern": ""}, "job_type_pattern is empty"),
        ({"max_payload_bytes": 2048, "max_request_bytes": 1024}, "max_payload_bytes"),
        ({"default_timeout_s": 10, "max_timeout_s": 5}, "default_timeout_s"),
        ({"lease_default_ttl_s": 120, "lease_max_ttl_s": 60}, "lease_default_ttl_s"),
        ({"retry_backoff_base_s": 10, "retry_backoff_max_s": 1}, "retry_backoff_base_s"),
        # Wider than the columns hold, or than any sane page or batch.
        ({"max_idempotency_key_length": 256}, "less than or equal to 255"),
        # One statement must fit MariaDB's MEDIUMTEXT and max_allowed_packet (16 MiB).
        ({"max_payload_bytes": 16 << 20}, "less than or equal to 4194304"),
        ({"max_result_bytes": 16 << 20}, "less than or equal to 4194304"),
        ({"max_name_length": 129}, "less than or equal to 128"),
        ({"max_page_size": 0}, "greater than or equal to 1"),
        ({"max_page_size": 10**6}, "less than or equal to 10000"),
        ({"max_batch_size": 10**7}, "less than or equal to 100000"),
        ({"max_preload_models": 101}, "less than or equal to 100"),
        ({"max_delay_s": 0}, "greater than 0"),
        ({"default_max_attempts": 1000}, "less than or equal to 100"),
    ],
)
def test_settings__nonsense_limit_is_a_startup_error(overrides: dict[str, Any], says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        Settings(**overrides)


def test_settings__limits_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCH_JOB_TYPE_PATTERN", "^team_[a-z]+$")
    monkeypatch.setenv("ORCH_MAX_NAME_LENGTH", "32")
    settings = Settings()
    assert settings.job_type_pattern == "^team_[a-z]+$"
    assert settings.max_name_length == 32


def _limits(**overrides: Any) -> InputLimits:
    return InputLimits(Settings(**overrides))


def test_check_job_types__pattern_matches_in_full() -> None:
    limits = _limits(job_type_pattern="team_[a-z]+")
    limits.check_job_types(["team_a", "preloads"])
    for bad in ["team_", "team_a1", "xteam_a", "team_a\n"]:
        with pytest.raises(InvalidRequest) as caught:
            limits.check_job_types([bad])
        assert caught.value.details["limit"] == "job_type_pattern"


def test_check_idempotency_key__over_the_length() -> None:
    limits = _limits(max_idempotency_key_length=4)
    limits.check_idempotency_key(None)
    limits.check_idempotency_key("\U0001f680" * 4)  # characters, not bytes
    with pytest.raises(InvalidRequest, match="5 characters; the limit is 4"):
        limits.check_idempotency_key("abcde")


def test_check_schedule__run_at_or_delay_past_the_horizon() -> None:
    limits = _limits(max_delay_s=60)
    now = datetime(2030, 1, 1)
    limits.check_schedule(now + timedelta(seconds=60), now)
    with pytest.raises(InvalidRequest) as caught:
        limits.check_schedule(now + timedelta(seconds=61), now)
    assert caught.value.details["limit"] == "max_delay_s"


def test_check_names__each_name_field_is_bounded() -> None:
    limits = _limits(max_name_length=3)
    limits.check_names(agent="abc", operation=None, node="n")
    with pytest.raises(InvalidRequest, match="node is 4 characters"):
        limits.check_names(agent="abc", node="abcd")


@pytest.mark.parametrize("name", ["a\x00", "a\nb", "\x1b[31m", "a\x7f"])
def test_check_names__control_characters_are_refused(name: str) -> None:
    with pytest.raises(InvalidRequest, match="agent holds a control character"):
        _limits().check_names(agent=name)


def test_check_names__other_unicode_is_kept() -> None:
    _limits().check_names(
        agent="team-\U0001f680", operation="\u05e9\u05dc\u05d5\u05dd", node="n\u00e9"
    )


def test_check_preload_count() -> None:
    limits = _limits(max_preload_models=2)
    limits.check_preload_count(2)
    with pytest.raises(InvalidRequest, match="at most 2 models"):
        limits.check_preload_count(3)


def test_cli__nonsense_limit_stops_the_start_with_the_reason(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from orchestrator.cli import main

    monkeypatch.setenv("ORCH_LEASE_DEFAULT_TTL_S", "7200")
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (
        "error: invalid setting: lease_default_ttl_s must not be more than lease_max_ttl_s"
    )
