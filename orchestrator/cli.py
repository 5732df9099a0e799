"""The `orchestrator` command."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import httpx
from pydantic import ValidationError

from orchestrator import (
    cli_fleet,
    cli_gpu,
    cli_insight,
    cli_jobs,
    cli_models,
    cli_ops,
    cli_tokens,
    cli_usage,
)
from orchestrator.cli_support import UsageError
from orchestrator.errors import OrchestratorError
from orchestrator.logconfig import configure_logging
from orchestrator.settings import Settings

logger = logging.getLogger(__name__)


def _csv(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orchestrator",
        description="Durable GPU job orchestrator. Settings come from ORCH_* variables.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser("up", help="run everything locally on embedded defaults")
    up.add_argument("--workers", type=int, help="worker processes (ORCH_UP_WORKERS)")
    up.add_argument("--concurrency", type=int, help="handler threads per worker")
    up.add_argument("--port", type=int, help="API port (ORCH_PORT)")

    serve = sub.add_parser("serve", help="run the API and the engine")
    serve.add_argument("--host", help="bind address (ORCH_HOST)")
    serve.add_argument("--port", type=int, help="API port (ORCH_PORT)")
    serve.add_argument("--no-engine", action="store_true", help="serve the API only")

    worker = sub.add_parser("worker", help="run a worker process")
    worker.add_argument("--types", type=_csv, help="job types to serve (default: all handlers)")
    worker.add_argument("--concurrency", type=int, help="handler threads (ORCH_WORKER_CONCURRENCY)")
    worker.add_argument(
        "--pool",
        help="the worker pool it belongs to; its job types and concurrency by default",
    )
    worker.add_argument(
        "--import",
        dest="imports",
        type=_csv,
        default=[],
        help="modules with @handler functions, comma-separated",
    )

    db = sub.add_parser("db", help="database schema")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    db_sub.add_parser("upgrade", help="apply migrations up to the newest")
    db_sub.add_parser("current", help="print the schema's revision")

    # Each area adds its own commands, with a `handler` default (see `_dispatch`).
    areas = (cli_jobs, cli_insight, cli_ops, cli_gpu, cli_fleet, cli_models, cli_tokens)
    for area in (*areas, cli_usage):
        area.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as exc:
        # A model-level check (settings that contradict each other) has no field to name.
        problems = "; ".join(
            (f"ORCH_{'_'.join(str(p) for p in e['loc']).upper()}: " if e["loc"] else "")
            + e["msg"].removeprefix("Value error, ")
            for e in exc.errors()
        )
        print(f"error: invalid setting: {problems}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_json)
    try:
        return _dispatch(args, settings)
    except UsageError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except OrchestratorError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`orchestrator leases | head`): not an error of ours.
        sys.stderr.close()
        return 0
    except Exception as exc:
        # Whatever broke, an operator's tool answers in one line, never a traceback.
        print(f"error: {_describe(exc, settings)}", file=sys.stderr)
        logger.debug("the command failed", exc_info=exc, extra={"event": "cli_failed"})
        return 1


def _describe(exc: Exception, settings: Settings) -> str:
    """One line for an error that is not the API's answer: the server, or our own."""
    url = settings.resolved_api_url()
    if isinstance(exc, httpx.ConnectError):
        return (
            f"cannot reach the orchestrator at {url} "
            "(is it running? try `orchestrator up`, or set ORCH_API_URL)"
        )
    if isinstance(exc, httpx.TimeoutException):
        return f"the orchestrator at {url} did not answer in time"
    if isinstance(exc, httpx.HTTPError | httpx.InvalidURL):
        return f"{url}: {exc} (check ORCH_API_URL)"
    if type(exc).__module__.startswith("sqlalchemy."):
        # `db upgrade|current`: the driver's own error says it best (and not the password).
        return f"database error: {_first_line(getattr(exc, 'orig', None) or exc)}"
    return f"{type(exc).__name__}: {_first_line(exc)} (ORCH_LOG_LEVEL=DEBUG shows where)"


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:300]


def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    command: str = args.command
    handler = getattr(args, "handler", None)
    if handler is not None:
        result: int = handler(args, settings)
        return result
    if command == "up":
        from orchestrator.up import up

        if args.port:
            settings = settings.model_copy(update={"port": args.port})
        up(
            settings,
            workers=args.workers if args.workers is not None else settings.up_workers,
            concurrency=args.concurrency or settings.worker_concurrency,
        )
        return 0
    if command == "serve":
        from orchestrator.up import serve

        updates = {k: v for k, v in (("host", args.host), ("port", args.port)) if v}
        serve(settings.model_copy(update=updates), run_engine=not args.no_engine)
        return 0
    if command == "worker":
        from workers.main import run_worker

        return run_worker(
            settings,
            job_types=args.types,
            concurrency=args.concurrency,
            imports=args.imports,
            pool=args.pool,
        )
    if command == "db":
        return _db(args.db_command, settings)
    raise AssertionError(command)


def _db(action: str, settings: Settings) -> int:
    from orchestrator import migrate
    from orchestrator.wiring import build_store

    store = build_store(settings)
    try:
        if action == "upgrade":
            migrate.upgrade(store.engine)
        print(
            f"schema revision: {migrate.current_revision(store.engine)} "
            f"(newest: {migrate.head_revision(store.engine)})"
        )
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
