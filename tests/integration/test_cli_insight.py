"""`orchestrator explain`, `jobs priority` and `queue stats` against a live server."""

from __future__ import annotations

import json

import pytest

from tests.integration.harness import System
from tests.integration.test_cli import Cli, cli, one_error_line

pytestmark = pytest.mark.slow
__all__ = ["cli"]  # the fixture, used by name


def test_cli__explain_priority_and_queue_stats(system: System, cli: Cli) -> None:
    later = system.submit(type="echo", delay_s=3600, priority="low")
    explained, as_json, moved, stats, stats_json = cli.many(
        ("explain", later),
        ("explain", later, "--json"),
        ("jobs", "priority", later, "critical"),
        ("queue", "stats", "--type", "echo"),
        ("queue", "--json"),
    )
    assert explained.returncode == 0, explained.stderr
    assert explained.stdout.startswith("Not running yet: it was submitted to run at")
    assert "! delayed: " in explained.stdout
    assert json.loads(as_json.stdout)["reasons"][0]["code"] == "delayed"
    assert moved.returncode == 0, moved.stderr
    assert "critical" in moved.stdout
    assert system.job(later)["priority"] == "critical"
    assert stats.stdout.startswith("TYPE") and "echo" in stats.stdout
    assert {q["type"] for q in json.loads(stats_json.stdout)["queues"]} >= {"echo"}
    system.client.post(f"/jobs/{later}/cancel")
    one_error_line(cli("jobs", "priority", later, "low"), 1, "error: 409 ")
