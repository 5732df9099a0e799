"""The real `orchestrator serve`, `worker` and `node` under a stand-in for systemd: a unix
datagram socket in NOTIFY_SOCKET that, as systemd does, learns each sender's pid.

They say READY=1 when they serve, feed the watchdog, and say STOPPING=1 on SIGTERM; only
the main process speaks (systemd refuses the others). SQLite and the embedded Redis only:
the notifications do not touch the backends, which test_processes.py runs on both."""

from __future__ import annotations

import signal
import socket
import struct
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from orchestrator.streams.embedded import EmbeddedRedis
from tests.integration.harness import wait_until
from tests.integration.processes import Proc, Processes, processes

pytestmark = pytest.mark.slow

# A ping every 0.2 s: the stale limit is then three of the loop's own turns.
WATCHDOG_USEC = 400_000
FAST_ENV = {
    "ORCH_HEARTBEAT_INTERVAL_S": "0.5",
    "ORCH_SCHEDULER_INTERVAL_S": "0.1",
    "ORCH_POOL_RECONCILE_INTERVAL_S": "0.2",
    "ORCH_SHUTDOWN_GRACE_S": "5",
    "ORCH_LOG_LEVEL": "INFO",
}
_CREDENTIALS = struct.Struct("3i")  # struct ucred: pid, uid, gid


class SystemdSocket:
    """The receiving end of NOTIFY_SOCKET, with each message's sender pid."""

    def __init__(self, folder: Path) -> None:
        self.path = str(folder / "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(self.path)
        self.seen: list[tuple[int, str]] = []
        self._returned: set[int] = set()

    def env(self) -> dict[str, str]:
        return {"NOTIFY_SOCKET": self.path, "WATCHDOG_USEC": str(WATCHDOG_USEC)}

    def recv(self, timeout: float) -> tuple[int, str]:
        self.sock.settimeout(timeout)
        data, ancillary, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        pid = next(
            _CREDENTIALS.unpack(payload[:12])[0]
            for level, kind, payload in ancillary
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS
        )
        self.seen.append((pid, data.decode()))
        return self.seen[-1]

    def until(self, line: str, proc: Proc, timeout: float = 30) -> str:
        """The first message not returned before that holds `line`, among those already
        read while looking for others or else the next ones to arrive."""
        deadline = time.monotonic() + timeout
        while True:
            for i, (_pid, text) in enumerate(self.seen):
                if i not in self._returned and line in text.split("\n"):
                    self._returned.add(i)
                    return text
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    raise TimeoutError
                self.recv(left)
            except TimeoutError:
                raise AssertionError(
                    f"no {line} in {self.seen[-20:]}:\n{proc.output()[-3000:]}"
                ) from None

    def senders(self) -> set[int]:
        return {pid for pid, _text in self.seen}


@pytest.fixture
def notify_socket() -> Iterator[SystemdSocket]:
    # A short folder: a socket path must fit in 108 bytes.
    with tempfile.TemporaryDirectory(prefix="sdn-") as folder:
        sock = SystemdSocket(Path(folder))
        yield sock
        sock.sock.close()


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, str]]:
    redis_ = EmbeddedRedis(tmp_path / "redis")
    redis_.start()
    try:
        yield {
            **FAST_ENV,
            "ORCH_DATA_DIR": str(tmp_path / "var"),
            "ORCH_DATABASE_URL": f"sqlite:///{tmp_path / 'jobs.db'}",
            "ORCH_REDIS_URL": redis_.url,
        }
    finally:
        redis_.stop()


def start_notifying(p: Processes, sd: SystemdSocket, *args: str) -> Proc:
    """Start `orchestrator ARGS` as systemd starts a Type=notify unit's main process."""
    proc = Proc(list(args), {**p.env, **sd.env()}, p.workdir / f"{args[0]}-sd.log", p.workdir)
    p.procs.append(proc)
    return proc


@contextmanager
def upgraded(env: dict[str, str], tmp_path: Path) -> Iterator[Processes]:
    with processes(env, tmp_path) as p:
        result = p.run("db", "upgrade")
        assert result.returncode == 0, result.stderr
        yield p


def test_serve__ready_once_it_listens_fed_while_alive_stopping_at_sigterm(
    env: dict[str, str], tmp_path: Path, notify_socket: SystemdSocket
) -> None:
    with upgraded(env, tmp_path) as p:
        server = start_notifying(p, notify_socket, "serve")
        ready = notify_socket.until("READY=1", server)
        assert f"STATUS=API on 127.0.0.1:{p.port}; " in ready
        assert p.http.get("/health").status_code == 200  # at once: it listened before READY
        notify_socket.until("WATCHDOG=1", server)
        notify_socket.until("WATCHDOG=1", server)
        notify_socket.until(f"STATUS=API on 127.0.0.1:{p.port}; leader", server)

        server.signal(signal.SIGTERM)
        notify_socket.until("STOPPING=1", server)
        assert server.wait(30) == 0, server.output()
        assert notify_socket.senders() == {server.popen.pid}


def test_worker__ready_at_its_first_heartbeat_then_fed_then_stopping(
    env: dict[str, str], tmp_path: Path, notify_socket: SystemdSocket
) -> None:
    with upgraded(env, tmp_path) as p:
        worker = start_notifying(p, notify_socket, "worker", "--types", "echo")
        ready = notify_socket.until("READY=1", worker)
        assert "STATUS=worker " in ready and ": echo, 4 slots" in ready
        for _ in range(3):
            notify_socket.until("WATCHDOG=1", worker)

        worker.signal(signal.SIGTERM)
        notify_socket.until("STOPPING=1", worker)
        assert worker.wait(30) == 0, worker.output()
        assert notify_socket.senders() == {worker.popen.pid}


def test_node__speaks_for_its_unit_alone_its_workers_do_not(
    env: dict[str, str], tmp_path: Path, notify_socket: SystemdSocket
) -> None:
    with upgraded(env, tmp_path) as p:
        server = p.start("serve")
        p.wait_healthy(server)
        created = p.run("pools", "create", "sd", "--types", "echo", "--node", "sd-node")
        assert created.returncode == 0, created.stderr
        p.env["ORCH_NODE_NAME"] = "sd-node"
        node = start_notifying(p, notify_socket, "node")
        notify_socket.until("READY=1", node)

        def pool_worker_heartbeats() -> bool:
            rows = p.http.get("/workers", params={"pool": "sd"}).json()["workers"]
            return any(w["status"] == "running" for w in rows)

        wait_until(pool_worker_heartbeats, 30, "the pool's worker to run")
        # Its worker has heartbeaten by now: a NOTIFY_SOCKET it had inherited would have
        # carried its READY=1 here among the supervisor's pings.
        for _ in range(5):
            notify_socket.until("WATCHDOG=1", node)
        notify_socket.until("STATUS=node sd-node: 1 workers", node)
        assert notify_socket.senders() == {node.popen.pid}

        node.signal(signal.SIGTERM)
        notify_socket.until("STOPPING=1", node)
        assert node.wait(60) == 0, node.output()
        assert notify_socket.senders() == {node.popen.pid}
