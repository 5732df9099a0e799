"""A reduced run of scripts/bench (500 jobs, our system only): the script works, and every
job finishes exactly once on the real MariaDB + Redis."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.integration.backends import real_database, real_redis_prefix

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.real, pytest.mark.slow]


def test_bench__reduced_run_finishes_every_job_exactly_once(tmp_path: Path) -> None:
    # Skips locally (fails in CI) when a server is absent, like every real-server test.
    with real_database(), real_redis_prefix():
        pass
    out = tmp_path / "bench.json"
    run = subprocess.run(
        [
            str(ROOT / "scripts" / "bench"),
            "--jobs",
            "500",
            "--quick",
            "--only",
            "e2e,reclaim",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    figures = json.loads(out.read_text())
    (e2e,) = figures["e2e"]
    assert e2e["jobs"] == 500
    assert e2e["audit"] == {
        "jobs": 500,
        "not_done": 0,
        "not_one_attempt": 0,
        "completed_events": 500,
        "started_events": 500,
        "duplicate_completions": 0,
        "rejected_results": 0,
        "exactly_once": True,
    }
    assert e2e["jobs_per_s"] > 0
    assert figures["reclaim"]["jobs"] == 1000
    assert "exactly once: yes" in run.stdout
    assert "end to end, 500 jobs" in run.stdout
