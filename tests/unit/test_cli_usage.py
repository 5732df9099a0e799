"""`orchestrator usage`: its time arguments and its table, without a server."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from orchestrator.cli_support import UsageError
from orchestrator.cli_usage import moment, usage_table

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("90m", "2026-12-01T10:30:00+00:00"),
        ("24h", "2026-11-30T12:00:00+00:00"),
        ("7d", "2026-11-24T12:00:00+00:00"),
        ("30s", "2026-12-01T11:59:30+00:00"),
        ("2026-11-01T08:00:00", "2026-11-01T08:00:00"),
        ("2026-11-01T08:00:00+01:00", "2026-11-01T08:00:00+01:00"),
    ],
)
def test_moment__ages_and_times(value: str, expected: str) -> None:
    assert moment(value, NOW) == expected


@pytest.mark.parametrize("value", ["yesterday", "5w", "-1h", ""])
def test_moment__anything_else_is_a_usage_error(value: str) -> None:
    with pytest.raises(UsageError):
        moment(value, NOW)


def test_usage_table__groups_total_and_measured_peak() -> None:
    group = {"leases": 2, "gpu_seconds": 7200.0, "vram_mb_seconds_est": 1024 * 3600 * 4.0}
    report = {
        "group_by": "owner",
        "groups": [
            {"key": "alice", **group, "vram_mb_seconds_peak": 1024 * 3600.0, "measured_leases": 1},
            {"key": None, **group, "vram_mb_seconds_peak": 0.0, "measured_leases": 0},
        ],
        "total": {
            "key": None,
            "leases": 4,
            "gpu_seconds": 14400.0,
            "vram_mb_seconds_est": 1024 * 3600 * 8.0,
            "vram_mb_seconds_peak": 1024 * 3600.0,
            "measured_leases": 1,
        },
    }
    lines = usage_table(report).splitlines()
    assert lines[0].split() == [
        "OWNER",
        "LEASES",
        "GPU-HOURS",
        "EST",
        "VRAM",
        "GB-H",
        "PEAK",
        "VRAM",
        "GB-H",
    ]
    assert lines[1].split() == ["alice", "2", "2.000", "4.000", "1.000", "(1", "measured)"]
    assert lines[2].split() == ["(none)", "2", "2.000", "4.000", "-"]
    assert lines[3].split()[:3] == ["(total)", "4", "4.000"]


def test_usage_table__nothing_recorded() -> None:
    empty = {"group_by": "type", "groups": [], "total": {}}
    assert usage_table(empty) == "no usage recorded for this selection"
