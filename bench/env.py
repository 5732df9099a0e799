"""A benchmark's own world: a fresh MariaDB database, a Redis key prefix, and real
`orchestrator serve` / `orchestrator worker` processes, all removed afterwards."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import redis
import sqlalchemy as sa

from orchestrator.children import die_with_parent
from orchestrator.ids import new_token

ROOT = Path(__file__).resolve().parent.parent
MARIADB_URL = os.environ.get("ORCH_BENCH_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/test")
REDIS_URL = os.environ.get("ORCH_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
# Set (to anything but "" or "0") to keep each measurement's process logs; a failed
# measurement keeps its logs anyway and says where they are.
KEEP_LOGS = os.environ.get("ORCH_BENCH_KEEP_LOGS", "") not in ("", "0")


class BenchUnavailable(RuntimeError):
    """MariaDB or Redis is not reachable at 127.0.0.1."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(every)


def redis_client() -> redis.Redis:
    return redis.Redis.from_url(REDIS_URL, decode_responses=True, socket_connect_timeout=2)


def delete_prefix(client: redis.Redis, prefix: str) -> None:
    keys = list(client.scan_iter(f"{prefix}*", count=1000))
    for i in range(0, len(keys), 1000):
        client.delete(*keys[i : i + 1000])


class Proc:
    """A subprocess with its output in a log file (shown when it dies early). It dies with
    the bench (SIGKILL when its parent goes, however it goes), so a killed or timed-out
    bench leaves no server or worker running."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._out = log.open("wb")
        self.popen = subprocess.Popen(
            args,
            env=env,
            cwd=ROOT,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: die_with_parent(signal.SIGKILL),
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        self._out.flush()
        return self.log.read_text(errors="replace")[-4000:]

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 10) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signum)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._out.close()


def rss_mb(pid: int) -> float:
    """Resident memory of a process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class BenchEnv:
    """One database + one key prefix, and the processes started on them."""

    def __init__(self, stack: ExitStack, label: str, **settings: str) -> None:
        self.stack = stack
        self.name = f"orch_bench_{label}_{new_token()[:8]}"
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{self.name}-"))
        self.db_url = sa.make_url(MARIADB_URL).set(database=self.name).render_as_string(False)
        self.prefix = f"{self.name}:"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "ORCH_DATABASE_URL": self.db_url,
            "ORCH_REDIS_URL": REDIS_URL,
            "ORCH_REDIS_PREFIX": self.prefix,
            "ORCH_LEADER_LOCK": self.name,
            "ORCH_PORT": str(self.port),
            "ORCH_LOG_LEVEL": "WARNING",
            "ORCH_GPU_BACKEND": "none",
            **{f"ORCH_{k.upper()}": v for k, v in settings.items()},
        }
        self.procs: list[Proc] = []
        self.engine = sa.create_engine(self.db_url, pool_pre_ping=True)
        self.http = httpx.Client(base_url=self.url, timeout=30)

    def setup(self) -> None:
        admin = sa.create_engine(MARIADB_URL, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.exec_driver_sql(f"CREATE DATABASE {self.name} CHARACTER SET utf8mb4")
        except sa.exc.OperationalError as exc:
            raise BenchUnavailable(f"MariaDB at {MARIADB_URL}: {exc.orig}") from exc
        finally:
            admin.dispose()
        self.stack.callback(self._drop_database)
        client = redis_client()
        try:
            client.ping()
        except redis.ConnectionError as exc:
            raise BenchUnavailable(f"Redis at {REDIS_URL}: {exc}") from exc
        self.stack.callback(client.close)
        self.stack.callback(delete_prefix, client, self.prefix)
        self.stack.callback(self._stop_all)
        subprocess.run(
            [sys.executable, "-m", "orchestrator.cli", "db", "upgrade"],
            env=self.env,
            cwd=ROOT,
            check=True,
            stdout=subprocess.DEVNULL,
        )

    def _drop_database(self) -> None:
        self.http.close()
        self.engine.dispose()
        admin = sa.create_engine(MARIADB_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {self.name}")
        admin.dispose()

    def _stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop(signal.SIGKILL)

    def start(self, *args: str, env: dict[str, str] | None = None) -> Proc:
        log = self.workdir / f"{args[0]}-{len(self.procs)}.log"
        proc = Proc(
            [sys.executable, "-m", "orchestrator.cli", *args], {**self.env, **(env or {})}, log
        )
        self.procs.append(proc)
        return proc

    def serve(self) -> Proc:
        proc = self.start("serve")

        def healthy() -> bool:
            if not proc.alive():
                raise RuntimeError(f"serve exited:\n{proc.output()}")
            try:
                return self.http.get("/leader").json().get("is_leader") is True
            except (httpx.HTTPError, ValueError):
                return False

        wait_until(healthy, 60, "the API to lead")
        return proc

    def workers(self, count: int, *, env: dict[str, str] | None = None) -> list[Proc]:
        started = [
            self.start("worker", "--types", "noop", "--import", "bench.tasks", env=env)
            for _ in range(count)
        ]

        def registered() -> bool:
            for proc in started:
                if not proc.alive():
                    raise RuntimeError(f"worker exited:\n{proc.output()}")
            with self.engine.connect() as conn:
                n = conn.exec_driver_sql("SELECT COUNT(*) FROM orchestrator_workers").scalar()
            return int(n or 0) >= count

        wait_until(registered, 60, f"{count} workers to register", every=0.1)
        return started

    def scalar(self, sql: str) -> Any:
        with self.engine.connect() as conn:
            return conn.exec_driver_sql(sql).scalar()


@contextmanager
def bench_env(label: str, **settings: str) -> Iterator[BenchEnv]:
    with ExitStack() as stack:
        env = BenchEnv(stack, label, **settings)
        try:
            env.setup()
            yield env
        except BaseException:
            print(f"bench: {label} failed; its logs are in {env.workdir}", file=sys.stderr)
            raise
    # Here the processes have stopped and their logs are closed.
    if KEEP_LOGS:
        print(f"bench: {label} logs kept in {env.workdir}", file=sys.stderr)
    else:
        shutil.rmtree(env.workdir, ignore_errors=True)
