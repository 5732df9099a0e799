"""CLI commands for models: `models preload|status|warm`."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any
from urllib.parse import urlencode

from orchestrator.cli_support import api, json_flag, show, table
from orchestrator.errors import OrchestratorError
from orchestrator.settings import Settings

POLL_S = 0.5


def add_commands(sub: Any) -> None:
    """Add this area's subcommands to the `orchestrator` parser; each sets `handler`
    (called as `handler(args, settings) -> exit code`)."""
    models = sub.add_parser("models", help="model preloads and warm models")
    actions = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")

    preload = actions.add_parser("preload", help="warm models on the workers")
    preload.add_argument("models", nargs="+", metavar="MODEL", help="model ids (folder names)")
    preload.add_argument(
        "--refresh", action="store_true", help="load again even where already warm"
    )
    preload.add_argument("--wait", action="store_true", help="wait until they are loaded")
    preload.add_argument(
        "--timeout", type=float, default=600.0, help="seconds --wait waits (default 600)"
    )
    json_flag(preload)
    preload.set_defaults(handler=_preload)

    status = actions.add_parser("status", help="preloads: in progress, done, failed")
    status.add_argument("models", nargs="*", metavar="MODEL", help="only these models")
    json_flag(status)
    status.set_defaults(handler=_status)

    warm = actions.add_parser("warm", help="the models warm on each node")
    json_flag(warm)
    warm.set_defaults(handler=_warm)


def _preload(args: argparse.Namespace, settings: Settings) -> int:
    body = {"models": args.models, "refresh": args.refresh}
    answer = api(settings, "POST", "/models/preload", body)
    if not args.json:
        _print_preload(answer)
    watched = [q["model_id"] for q in answer["queued"]]
    watched += [s["model_id"] for s in answer["skipped"] if s["reason"] == "in_progress"]
    report = _wait(settings, watched, args.timeout) if args.wait and watched else None
    if args.json:
        # With --wait, the status report it waited for (None: nothing to wait for).
        show({**answer, "status": report} if args.wait else answer)
    elif report is not None:
        print(_status_table(report))
    return 1 if report is not None and report["summary"]["failed"] else 0


def _print_preload(answer: dict[str, Any]) -> None:
    for q in answer["queued"]:
        print(f"queued   {q['model_id']}  (job {q['job_id']})")
    for s in answer["skipped"]:
        why = (
            f"warm on {', '.join(s['warm_on'])}"
            if s["reason"] == "warm"
            else f"already {s['status'] or 'in progress'}"
        )
        print(f"skipped  {s['model_id']}  ({why}; --refresh loads it again)")


def _wait(settings: Settings, model_ids: list[str], timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    last = None
    while True:
        report: dict[str, Any] = api(settings, "GET", _status_path(model_ids))
        if not report["in_progress"]:
            return report
        if time.monotonic() > deadline:
            raise OrchestratorError(
                f"still loading after {timeout_s:g}s: {', '.join(report['in_progress'])}"
            )
        line = f"loading {len(report['in_progress'])} of {len(model_ids)}: " + ", ".join(
            report["in_progress"]
        )
        if line != last:
            print(line, file=sys.stderr)
            last = line
        time.sleep(POLL_S)


def _status(args: argparse.Namespace, settings: Settings) -> int:
    report = api(settings, "GET", _status_path(args.models))
    if args.json:
        return show(report)
    print(_status_table(report))
    return 0


def _warm(args: argparse.Namespace, settings: Settings) -> int:
    answer = api(settings, "GET", "/models")
    if args.json:
        return show(answer)
    rows = [
        (node["node"], m["model_id"], m["size_bytes"], m["worker_id"], m["loaded_at"])
        for node in answer["nodes"]
        for m in node["models"]
    ]
    if not rows:
        print("no warm models")
        return 0
    print(table(rows, ["NODE", "MODEL", "BYTES", "WORKER", "LOADED AT"]))
    return 0


def _status_path(model_ids: list[str]) -> str:
    if not model_ids:
        return "/models/status"
    return "/models/status?" + urlencode([("model", m) for m in model_ids])


def _status_table(report: dict[str, Any]) -> str:
    summary = report["summary"]
    head = (
        f"{summary['total']} models: {summary['done']} done, {summary['failed']} failed, "
        f"{len(report['in_progress'])} in progress; all ready: "
        f"{'yes' if report['all_ready'] else 'no'}"
    )
    if not report["models"]:
        return head
    rows = [
        (
            m["model_id"],
            m["status"],
            m["node"],
            ",".join(m["warm_on"]) or None,
            " ".join((m["error"] or "").split())[:80] or None,
        )
        for m in report["models"]
    ]
    return head + "\n" + table(rows, ["MODEL", "STATUS", "NODE", "WARM ON", "ERROR"])
