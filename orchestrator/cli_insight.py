"""CLI commands that explain and steer the queue: `explain`, `queue stats`,
`jobs priority`."""

from __future__ import annotations

import argparse
from typing import Any
from urllib.parse import urlencode

from orchestrator.cli_support import api, fields, json_flag, segment, show, table
from orchestrator.settings import Settings

PRIORITIES = ["critical", "high", "normal", "low"]


def add_commands(sub: Any) -> None:
    explain = sub.add_parser("explain", help="say why a job is not running yet")
    explain.add_argument("job_id")
    json_flag(explain)
    explain.set_defaults(handler=_explain)

    queue = sub.add_parser("queue", help="queue statistics per job type")
    actions = queue.add_subparsers(dest="queue_command", metavar="ACTION")
    stats = actions.add_parser("stats", help="depth by band, waits, throughput (the default)")
    for parser, under in ((queue, False), (stats, True)):
        parser.add_argument("--type", help="only this job type", default=argparse.SUPPRESS)
        parser.add_argument(
            "--window",
            type=float,
            metavar="S",
            default=argparse.SUPPRESS,
            help="look back S seconds for waits and outcomes (default 3600)",
        )
        json_flag(parser, under_parent=under)
        parser.set_defaults(handler=_stats)


def add_job_actions(actions: Any) -> None:
    """`jobs priority ID BAND`, under the `jobs` command."""
    priority = actions.add_parser("priority", help="move a waiting job to another band")
    priority.add_argument("job_id")
    priority.add_argument("band", choices=PRIORITIES)
    json_flag(priority, under_parent=True)
    priority.set_defaults(handler=_priority)


def _explain(args: argparse.Namespace, settings: Settings) -> int:
    answer = api(settings, "GET", f"/jobs/{segment(args.job_id)}/explain")
    if args.json:
        return show(answer)
    print(explain_view(answer))
    return 0


def explain_view(answer: dict[str, Any]) -> str:
    """The summary, then one line per reason (blocking ones marked)."""
    lines = [answer["summary"], ""]
    for r in answer["reasons"]:
        mark = "!" if r["blocking"] else "-"
        lines.append(f"{mark} {r['code']}: {r['message']}")
    return "\n".join(lines)


def _stats(args: argparse.Namespace, settings: Settings) -> int:
    params = {
        k: v
        for k, v in (
            ("type", getattr(args, "type", None)),
            ("window_s", getattr(args, "window", None)),
        )
        if v is not None
    }
    path = "/queue/statistics" + (f"?{urlencode(params)}" if params else "")
    answer = api(settings, "GET", path)
    if args.json:
        return show(answer)
    rows = [
        [
            q["type"],
            "/".join(str(q["pending_by_band"][b]) for b in PRIORITIES),
            q["running"],
            _seconds(q["avg_wait_s"]),
            _seconds(q["p95_wait_s"]),
            _seconds(q.get("oldest_wait_s")),
            q["throughput_per_hour"],
            None if q["success_rate"] is None else f"{100 * q['success_rate']:.1f}%",
        ]
        for q in answer["queues"]
    ]
    if not rows:
        print("no jobs in the window")
        return 0
    print(
        table(
            rows,
            [
                "TYPE",
                "PENDING C/H/N/L",
                "RUNNING",
                "AVG WAIT",
                "P95 WAIT",
                "OLDEST WAITING",
                "DONE/H",
                "SUCCESS",
            ],
        )
    )
    print(f"\n(waits and success over the last {answer['window_s']:g}s)")
    return 0


def _seconds(value: float | None) -> str | None:
    return None if value is None else f"{value:.2f}s"


def _priority(args: argparse.Namespace, settings: Settings) -> int:
    body = {"priority": args.band}
    job = api(settings, "PATCH", f"/jobs/{segment(args.job_id)}/priority", body)
    if args.json:
        return show(job)
    print(fields([("job", job["id"]), ("status", job["status"]), ("priority", job["priority"])]))
    return 0
