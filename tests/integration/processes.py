"""Running the real `orchestrator` command as subprocesses."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx

from orchestrator.streams.embedded import EmbeddedRedis
from tests.integration.backends import REDIS_URL, lock_name, real_database, real_redis_prefix
from tests.integration.harness import wait_until


def backend_env(
    backend: str, tmp_path: Path, stack: ExitStack, env: dict[str, str]
) -> dict[str, str]:
    """`env` plus the ORCH_ variables that point processes at this backend: a SQLite file and
    an embedded Redis of the test's own, or a fresh database on the real MariaDB and a key
    prefix on the real Redis (cleaned up by `stack`)."""
    env = dict(env)
    if backend == "sqlite":
        redis_ = EmbeddedRedis(tmp_path / "redis")
        redis_.start()
        stack.callback(redis_.stop)
        env.update(ORCH_DATABASE_URL=f"sqlite:///{tmp_path / 'jobs.db'}", ORCH_REDIS_URL=redis_.url)
        return env
    db_url = stack.enter_context(real_database())
    env.update(
        ORCH_DATABASE_URL=db_url,
        ORCH_LEADER_LOCK=lock_name(db_url),
        ORCH_REDIS_URL=REDIS_URL,
        ORCH_REDIS_PREFIX=stack.enter_context(real_redis_prefix()),
    )
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Proc:
    """A subprocess whose output goes to a file, so a failing test can show it."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path, cwd: Path) -> None:
        self.log = log
        self._out = log.open("wb")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", *args],
            env=env,
            cwd=cwd,
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        self._out.flush()
        return self.log.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        self.popen.send_signal(signum)

    def wait(self, timeout: float) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.log.name} did not exit:\n{self.output()}") from None

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait()
        self._out.close()


class Processes:
    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.env = {**os.environ, **env}
        self.workdir = workdir
        self.procs: list[Proc] = []
        self.port = free_port()
        self.env["ORCH_PORT"] = str(self.port)
        self.url = f"http://127.0.0.1:{self.port}"
        self.http = httpx.Client(base_url=self.url, timeout=10)

    def start(self, *args: str, name: str | None = None) -> Proc:
        log = self.workdir / f"{name or args[0]}-{len(self.procs)}.log"
        proc = Proc(list(args), self.env, log, self.workdir)
        self.procs.append(proc)
        return proc

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "orchestrator.cli", *args],
            env=self.env,
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def wait_healthy(self, proc: Proc, timeout: float = 30) -> None:
        def healthy() -> bool:
            if proc.popen.poll() is not None:
                raise AssertionError(f"exited with {proc.popen.returncode}:\n{proc.output()}")
            try:
                return self.http.get("/health").status_code == 200
            except httpx.TransportError:
                return False

        wait_until(healthy, timeout, "the API to answer")

    def submit(self, **body: Any) -> str:
        response = self.http.post("/jobs/submit", json=body)
        assert response.status_code == 202, response.text
        job_id: str = response.json()["job_id"]
        return job_id

    def wait_done(self, job_id: str, timeout: float = 30) -> dict[str, Any]:
        def finished() -> dict[str, Any] | None:
            job: dict[str, Any] = self.http.get(f"/jobs/{job_id}").json()
            return job if job["status"] in ("done", "dead_letter", "cancelled") else None

        job: dict[str, Any] = wait_until(finished, timeout, f"job {job_id} to finish")
        return job

    def close(self) -> None:
        for proc in self.procs:
            proc.stop()
        self.http.close()


@contextmanager
def processes(env: dict[str, str], workdir: Path) -> Iterator[Processes]:
    procs = Processes(env, workdir)
    try:
        yield procs
    finally:
        procs.close()
