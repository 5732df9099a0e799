"""The real commands, as a user runs them: `orchestrator db upgrade`, `serve`, `worker`, `up`.

Each scenario runs on SQLite + the embedded Redis, and on the real MariaDB + Redis."""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.integration.processes import Processes, backend_env, processes

pytestmark = pytest.mark.slow

FAST_ENV = {
    "ORCH_HEARTBEAT_INTERVAL_S": "0.5",
    "ORCH_RETRY_BACKOFF_BASE_S": "0.1",
    "ORCH_SCHEDULER_INTERVAL_S": "0.1",
    "ORCH_SHUTDOWN_GRACE_S": "10",
    "ORCH_LOG_LEVEL": "INFO",
}


@pytest.fixture(params=["sqlite", "mariadb"])
def service_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """ORCH_ variables naming this backend's database and Redis."""
    with ExitStack() as stack:
        env = {**FAST_ENV, "ORCH_DATA_DIR": str(tmp_path / "var")}
        yield backend_env(request.param, tmp_path, stack, env)


def test_serve_and_workers__jobs_submitted_over_http_finish(
    service_env: dict[str, str], tmp_path: Path
) -> None:
    with processes(service_env, tmp_path) as p:
        upgrade = p.run("db", "upgrade")
        assert upgrade.returncode == 0, upgrade.stderr
        assert re.search(r"schema revision: (\w+) \(newest: \1\)", upgrade.stdout), upgrade.stdout
        server = p.start("serve")
        workers = [p.start("worker", "--concurrency", "2") for _ in range(2)]
        p.wait_healthy(server)
        batch = {"jobs": [{"type": "echo", "payload": {"i": i}} for i in range(30)]}
        ids = [j["job_id"] for j in p.http.post("/jobs/submit_batch", json=batch).json()["jobs"]]
        for i, job_id in enumerate(ids):
            job = p.wait_done(job_id)
            assert (job["status"], job["result"]) == ("done", {"i": i})
        assert len({p.wait_done(j)["worker"] for j in ids}) >= 1

        # SIGTERM while a job runs: the worker finishes it, then exits 0.
        slow = p.submit(type="sleep", payload={"seconds": 1.5})
        _wait_running(p, slow)
        running_on = p.http.get(f"/jobs/{slow}").json()["worker"]
        for w in workers:
            w.signal(signal.SIGTERM)
        for w in workers:
            assert w.wait(20) == 0, w.output()
        job = p.wait_done(slow)
        assert job["status"] == "done" and job["worker"] == running_on
        assert "given back" not in "".join(w.output() for w in workers)

        server.signal(signal.SIGTERM)
        assert server.wait(20) == 0, server.output()


def test_worker__refuses_a_database_without_the_schema(
    service_env: dict[str, str], tmp_path: Path
) -> None:
    with processes(service_env, tmp_path) as p:
        result = p.run("worker", timeout=30)
        assert result.returncode == 1
        assert "run `orchestrator db upgrade`" in result.stderr
        assert "Traceback" not in result.stderr


def test_cli__submit_wait_and_get(service_env: dict[str, str], tmp_path: Path) -> None:
    with processes(service_env, tmp_path) as p:
        assert p.run("db", "upgrade").returncode == 0
        p.env["ORCH_API_URL"] = p.url
        server = p.start("serve")
        p.start("worker")
        p.wait_healthy(server)
        done = p.run("submit", "echo", "--payload", '{"x": 1}', "--wait", "--json", timeout=60)
        assert done.returncode == 0, done.stderr
        assert '"status": "done"' in done.stdout
        failed = p.run("submit", "fail", "--payload", '{"message": "nope"}', "--wait", "--json")
        assert failed.returncode == 1
        assert '"status": "dead_letter"' in failed.stdout
        bad = p.run("submit", "echo", "--payload", "{not json")
        assert bad.returncode == 1 and "--payload is not JSON" in bad.stderr
        rejected = p.run("submit", "Bad-Type")
        assert rejected.returncode == 1 and "422" in rejected.stderr
        missing = p.run("get", "no-such-job")
        assert missing.returncode == 1 and "404" in missing.stderr


def test_cli__unreachable_api_is_one_clear_line(tmp_path: Path) -> None:
    with processes({"ORCH_API_URL": "http://127.0.0.1:9"}, tmp_path) as p:
        result = p.run("get", "x")
        assert result.returncode == 1
        assert result.stderr.strip().startswith("error: cannot reach the orchestrator")
        assert "Traceback" not in result.stderr


def test_up__jobs_survive_a_restart(service_env: dict[str, str], tmp_path: Path) -> None:
    env = dict(service_env)
    if "sqlite" in env["ORCH_DATABASE_URL"]:
        # `up` on its own defaults: the SQLite file and the embedded Redis in ORCH_DATA_DIR.
        del env["ORCH_DATABASE_URL"], env["ORCH_REDIS_URL"]
    with processes(env, tmp_path) as p:
        up = p.start("up", "--workers", "1")
        p.wait_healthy(up)
        first = p.submit(type="echo", payload="before")
        assert p.wait_done(first)["status"] == "done"
        later = p.submit(type="echo", payload="after", delay_s=3)
        up.signal(signal.SIGINT)
        assert up.wait(30) == 0, up.output()
        assert "Traceback" not in up.output()

        up = p.start("up", "--workers", "1")
        p.wait_healthy(up)
        assert p.http.get(f"/jobs/{first}").json()["result"] == "before"
        job = p.wait_done(later, timeout=30)
        assert (job["status"], job["result"]) == ("done", "after")
        up.signal(signal.SIGTERM)
        assert up.wait(30) == 0, up.output()


def _wait_running(p: Processes, job_id: str) -> None:
    deadline = time.monotonic() + 20
    while p.http.get(f"/jobs/{job_id}").json()["status"] != "running":
        assert time.monotonic() < deadline, "job never started"
        time.sleep(0.05)
