"""A reduced run of scripts/bench (500 jobs, our system only): the script works, and every
job finishes exactly once on the real MariaDB + Redis."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.integration.backends import MARIADB_URL, REDIS_URL, real_database, real_redis_prefix

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.real, pytest.mark.slow]


def test_bench__reduced_run_finishes_every_job_exactly_once(tmp_path: Path) -> None:
    # Skips locally (fails in CI) when a server is absent, like every real-server test.
    with real_database(), real_redis_prefix():
        pass
    out = tmp_path / "bench.json"
    # Its own process group, so a timeout kills the bench and whatever it started (its
    # children also die with it: bench/env.py), and the servers the checks above found.
    bench = subprocess.Popen(
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
        env={
            **os.environ,
            "ORCH_BENCH_MARIADB_URL": MARIADB_URL,
            "ORCH_BENCH_REDIS_URL": REDIS_URL,
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = bench.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(bench.pid, signal.SIGKILL)
        stdout, stderr = bench.communicate()
        pytest.fail(f"the bench took over 90 s:\n{stdout}{stderr}")
    run = subprocess.CompletedProcess(bench.args, bench.returncode, stdout, stderr)
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
        "failed_attempts": 0,
        "pending_entries": 0,
        "stream_entries": 0,
        "handler_runs": 500,
        "exactly_once": True,
    }
    assert e2e["jobs_per_s"] > 0
    assert figures["reclaim"]["jobs"] == 1000
    assert "exactly once: yes" in run.stdout
    assert "end to end, 500 jobs" in run.stdout
