"""The `orchestrator` command."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import httpx
from pydantic import ValidationError

from orchestrator import cli_fleet, cli_gpu, cli_models
from orchestrator.cli_support import api as _api
from orchestrator.cli_support import show as _show
from orchestrator.errors import OrchestratorError
from orchestrator.logconfig import configure_logging
from orchestrator.settings import Settings


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

    submit = sub.add_parser("submit", help="submit a job through the API")
    submit.add_argument("type")
    submit.add_argument("--payload", default="{}", help="JSON payload")
    submit.add_argument("--priority", choices=["critical", "high", "normal", "low"])
    submit.add_argument("--wait", action="store_true", help="wait for the job to finish")
    submit.add_argument(
        "--timeout", type=float, default=300.0, help="seconds --wait waits (default 300)"
    )

    get = sub.add_parser("get", help="show a job")
    get.add_argument("job_id")

    dlq = sub.add_parser("dlq", help="the dead-letter queue")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    dlq_list = dlq_sub.add_parser("list", help="list dead-lettered jobs")
    dlq_list.add_argument("--type", help="only this job type")
    dlq_list.add_argument("--limit", type=int, default=50)
    dlq_list.add_argument("--json", action="store_true", help="print JSON")
    dlq_replay = dlq_sub.add_parser("replay", help="run dead-lettered jobs again")
    dlq_replay.add_argument("job_ids", nargs="+", metavar="JOB_ID")

    sub.add_parser("reclaim", help="run one reclaim pass now")
    sub.add_parser("leader", help="show which replica leads")
    # Each area adds its own commands, with a `handler` default (see `_dispatch`).
    for area in (cli_gpu, cli_fleet, cli_models):
        area.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"ORCH_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}" for e in exc.errors()
        )
        print(f"error: invalid setting: {problems}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_json)
    try:
        return _dispatch(args, settings)
    except OrchestratorError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    except httpx.ConnectError:
        print(
            f"error: cannot reach the orchestrator at {settings.resolved_api_url()} "
            "(is it running? try `orchestrator up`, or set ORCH_API_URL)",
            file=sys.stderr,
        )
        return 1
    except httpx.HTTPError as exc:
        print(f"error: {settings.resolved_api_url()}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`orchestrator leases | head`): not an error of ours.
        sys.stderr.close()
        return 0


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
    if command == "submit":
        return _submit(args, settings)
    if command == "get":
        return _show(_api(settings, "GET", f"/jobs/{args.job_id}"))
    if command == "dlq":
        return _dlq(args, settings)
    if command == "reclaim":
        return _show(_api(settings, "POST", "/control/reclaim"))
    if command == "leader":
        return _show(_api(settings, "GET", "/leader"))
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


def _dlq(args: argparse.Namespace, settings: Settings) -> int:
    if args.dlq_command == "replay":
        for job_id in args.job_ids:
            job = _api(settings, "POST", f"/dlq/{job_id}/replay")
            print(f"{job['id']}: {job['status']}")
        return 0
    query = f"?limit={args.limit}" + (f"&type={args.type}" if args.type else "")
    page = _api(settings, "GET", f"/dlq{query}")
    if args.json:
        return _show(page)
    if not page["jobs"]:
        print("no dead-lettered jobs")
    for job in page["jobs"]:
        error = " ".join((job["error"] or "").split())[:80]
        print(f"{job['id']}  {job['type']:<20} attempts {job['attempts']:<3} {error}")
    return 0


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _submit(args: argparse.Namespace, settings: Settings) -> int:
    try:
        payload = json.loads(args.payload, parse_constant=_reject_constant)
    except ValueError as exc:
        raise OrchestratorError(f"--payload is not JSON: {exc}") from None
    body: dict[str, Any] = {"type": args.type, "payload": payload}
    if args.priority:
        body["priority"] = args.priority
    job_id = _api(settings, "POST", "/jobs/submit", body)["job_id"]
    if not args.wait:
        print(job_id)
        return 0
    deadline = time.monotonic() + args.timeout
    last = None
    while True:
        job = _api(settings, "GET", f"/jobs/{job_id}")
        if job["status"] in ("done", "dead_letter", "cancelled"):
            _show(job)
            return 0 if job["status"] == "done" else 1
        if time.monotonic() > deadline:
            raise OrchestratorError(
                f"job {job_id} is still {job['status']} after {args.timeout:g}s"
            )
        progress = json.dumps(job["progress"]) if job["progress"] is not None else ""
        line = f"{job_id}: {job['status']} (attempt {job['attempts']}) {progress}"
        if line != last:
            print(line.rstrip(), file=sys.stderr)
            last = line
        time.sleep(0.25)


if __name__ == "__main__":
    sys.exit(main())
