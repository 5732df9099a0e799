"""`orchestrator up` and `orchestrator serve`: run the service."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

import uvicorn
from sqlalchemy.exc import SQLAlchemyError

from orchestrator import migrate
from orchestrator.api.app import create_app
from orchestrator.auth import Authenticator, check_exposure, is_loopback
from orchestrator.clock import SystemClock
from orchestrator.errors import OrchestratorError
from orchestrator.gpu import build_probe
from orchestrator.sdnotify import LoopProbe, Notifier, Watchdog, all_of
from orchestrator.settings import EMBEDDED, Settings
from orchestrator.streams.embedded import EmbeddedRedis
from orchestrator.telemetry import GpuReporter
from orchestrator.wiring import build_services, build_store
from workers.pool import LocalPool

logger = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """Uvicorn, minus its re-raising of SIGINT after shutdown (a traceback on every Ctrl-C).

    Under systemd it says READY=1 once it listens, feeds the watchdog while its event loop
    answers and `alive()` passes, and says STOPPING=1 when it begins to shut down."""

    def __init__(
        self,
        config: uvicorn.Config,
        notifier: Notifier | None = None,
        alive: Callable[[], bool] = lambda: True,
        describe: Callable[[], str] | None = None,
    ) -> None:
        super().__init__(config)
        self.notifier = notifier or Notifier(None)
        self.watchdog: Watchdog | None = None
        self._alive = alive
        self._describe = describe

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:  # listening: what the units ordered after us wait for
            self.notifier.ready(self._describe() if self._describe else None)
            loop_answers = LoopProbe(asyncio.get_running_loop())
            self.watchdog = self.notifier.watch(
                all_of(loop_answers, self._alive), describe=self._describe
            )

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.notifier.stopping("stopping: finishing requests, then the engine")
        await super().shutdown(sockets)

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        def on_signal(signum: int, frame: FrameType | None) -> None:
            self.handle_exit(signum, frame)

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def serve(settings: Settings, *, run_engine: bool = True) -> None:
    """The API (and the engine) until SIGINT/SIGTERM. The schema must be at head."""
    store = build_store(settings)
    migrate.check_at_head(store.engine)
    services = build_services(settings, store=store)
    try:
        check_exposure(settings, services.auth)
    except OrchestratorError:
        services.close()
        raise
    # Agents on this host lease its GPUs through the API: report them, if it has any.
    reporter = None
    probe = build_probe(settings)
    if probe.read().devices:
        reporter = GpuReporter(store, probe, settings, services.clock)
        reporter.start()
    else:
        probe.close()
    notifier = Notifier.from_env()

    def describe() -> str:
        role = "leader" if services.engine.leading else "standby"
        return f"API on {settings.host}:{settings.port}; " + (role if run_engine else "no engine")

    server: _Server | None = None
    try:
        server = _Server(
            uvicorn.Config(
                create_app(services, run_engine=run_engine),
                host=settings.host,
                port=settings.port,
                log_config=None,
                timeout_graceful_shutdown=10,
            ),
            notifier,
            alive=_engine_running if run_engine else lambda: True,
            describe=describe,
        )
        server.run()
    finally:
        if server is not None and server.watchdog is not None:
            server.watchdog.stop()
        notifier.close()
        if reporter is not None:
            reporter.stop()
        services.close()


def _engine_running() -> bool:
    """The engine's thread (`Engine.start` names it) is alive: it rides out outages and ends
    only at shutdown, so without it this replica neither leads nor stands for leader."""
    return any(t.name == "engine" and t.is_alive() for t in threading.enumerate())


def up(settings: Settings, *, workers: int, concurrency: int) -> None:
    """Everything on one machine: embedded Redis (unless ORCH_REDIS_URL names one), the
    schema, the API with the engine, and a pool of worker processes with the built-ins."""
    _check_port_free(settings)
    _check_exposure_first(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    embedded = None
    if settings.redis_url == EMBEDDED:
        embedded = EmbeddedRedis(settings.data_dir)
        embedded.start()
        settings = settings.model_copy(update={"redis_url": embedded.url})
    try:
        store = build_store(settings)
        migrate.upgrade(store.engine)
        store.close()
        env = {
            **os.environ,
            "ORCH_DATA_DIR": str(settings.data_dir.resolve()),
            "ORCH_DATABASE_URL": settings.resolved_database_url(),
            "ORCH_REDIS_URL": settings.resolved_redis_url(),
        }
        pool = LocalPool(workers, ["--concurrency", str(concurrency)], env)
        pool.start()
        try:
            url = f"http://{settings.host}:{settings.port}"
            logger.info(
                "orchestrator up: API on %s (docs at %s/docs), %d worker processes, data in "
                "%s. Ctrl-C stops it (a second Ctrl-C gives running jobs back at once).",
                url,
                url,
                workers,
                settings.data_dir.resolve(),
                extra={"event": "up"},
            )
            serve(settings)
        finally:
            _stop_pool(pool, settings.shutdown_grace_s)
    finally:
        if embedded is not None:
            embedded.stop()


class _TokenCount:
    """What `Authenticator.enabled` asks of the database, answered ahead of time."""

    def __init__(self, count: int) -> None:
        self.count = count

    def count_tokens(self) -> int:
        return self.count


def _check_exposure_first(settings: Settings) -> None:
    """Refuse to run open on a public address before starting anything (Redis, the
    migrations, worker processes): `serve` checks again, and says it runs open on loopback."""
    if is_loopback(settings.host):
        return
    count = 0
    try:
        store = build_store(settings)
        try:
            count = store.count_tokens()
        finally:
            store.close()
    except (SQLAlchemyError, OSError, OrchestratorError):
        count = 0  # no database or schema yet: no tokens either
    auth = Authenticator(_TokenCount(count), settings, SystemClock())  # type: ignore[arg-type]
    check_exposure(settings, auth)


def _stop_pool(pool: LocalPool, grace_s: float) -> None:
    """Stop the workers; a signal meanwhile (a second Ctrl-C) is passed on to them, so
    they give their running jobs back at once instead of waiting out the grace period."""

    def forward(signum: int, _frame: FrameType | None) -> None:
        logger.warning(
            "stopping now: workers give their running jobs back", extra={"event": "up_stop_now"}
        )
        pool.signal(signal.SIGTERM)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        pool.stop(grace_s)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _check_port_free(settings: Settings) -> None:
    with socket.socket() as probe:
        # As uvicorn binds: a port in TIME_WAIT after a restart is free to use.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((settings.host, settings.port))
        except OSError as exc:
            raise OrchestratorError(
                f"cannot listen on {settings.host}:{settings.port} ({exc.strerror}): "
                "pass --port or set ORCH_PORT"
            ) from None
