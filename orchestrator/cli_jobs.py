"""CLI commands for jobs: `submit`, `get`, `jobs list|show`, `cancel`."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TextIO
from urllib.parse import urlencode

from orchestrator import cli_insight
from orchestrator.cli_support import (
    UsageError,
    api,
    compact,
    fields,
    for_each,
    json_flag,
    segment,
    show,
    table,
    when,
)
from orchestrator.errors import OrchestratorError
from orchestrator.jobs import TERMINAL_STATUSES, JobStatus
from orchestrator.settings import Settings

PRIORITIES = ["critical", "high", "normal", "low"]
POLL_S = 0.25
# How much of a payload or result a readable view shows; --json shows all of it.
VALUE_LIMIT = 300


def add_commands(sub: Any) -> None:
    """Add this area's subcommands to the `orchestrator` parser; each sets `handler`
    (called as `handler(args, settings) -> exit code`)."""
    submit = sub.add_parser("submit", help="submit a job (and wait for it with --wait)")
    submit.add_argument("type", help="the job type, e.g. echo")
    submit.add_argument("--payload", default="{}", help="JSON payload (default {})")
    submit.add_argument("--priority", choices=PRIORITIES, help="priority band (default normal)")
    submit.add_argument("--gpu-vram", type=int, metavar="MB", help="VRAM it needs on each GPU")
    submit.add_argument("--gpus", type=int, metavar="N", help="GPUs on one node (needs --gpu-vram)")
    submit.add_argument("--model", metavar="M", help="model it uses (needs --gpu-vram)")
    submit.add_argument("--delay", type=float, metavar="S", help="start no sooner than S seconds")
    submit.add_argument("--idempotency-key", metavar="K", help="the same K submits once")
    submit.add_argument("--max-attempts", type=int, metavar="N", help="attempts before the DLQ")
    submit.add_argument("--wait", action="store_true", help="wait for it to finish, with progress")
    submit.add_argument(
        "--timeout", type=float, default=300.0, help="seconds --wait waits (default 300)"
    )
    json_flag(submit)
    submit.set_defaults(handler=_submit)

    get = sub.add_parser("get", help="show a job (as `jobs show`)")
    _show_arguments(get)

    jobs = sub.add_parser("jobs", help="list jobs (the default), or show one")
    json_flag(jobs)
    actions = jobs.add_subparsers(dest="jobs_command", metavar="ACTION")
    listing = actions.add_parser("list", help="jobs, newest first")
    listing.add_argument("--status", choices=[s.value for s in JobStatus])
    listing.add_argument("--type", help="only this job type")
    listing.add_argument("--limit", type=int, default=50, help="most jobs shown (default 50)")
    listing.add_argument("--cursor", help="where the previous page ended (it prints it)")
    json_flag(listing, under_parent=True)
    listing.set_defaults(handler=_list)
    _show_arguments(actions.add_parser("show", help="show a job"), under_parent=True)
    cli_insight.add_job_actions(actions)
    jobs.set_defaults(handler=_list, status=None, type=None, limit=50, cursor=None)

    cancel = sub.add_parser("cancel", help="cancel jobs (a running one stops at its next check)")
    cancel.add_argument("job_ids", nargs="+", metavar="JOB_ID")
    json_flag(cancel)
    cancel.set_defaults(handler=_cancel)


def _show_arguments(parser: argparse.ArgumentParser, *, under_parent: bool = False) -> None:
    parser.add_argument("job_id")
    parser.add_argument("--events", action="store_true", help="its audit trail too")
    json_flag(parser, under_parent=under_parent)
    parser.set_defaults(handler=_show_job)


# -- submit ------------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def submit_body(args: argparse.Namespace) -> dict[str, Any]:
    """The `POST /jobs/submit` body that `submit`'s arguments ask for."""
    try:
        payload = json.loads(args.payload, parse_constant=_reject_constant)
    except ValueError as exc:
        raise OrchestratorError(f"--payload is not JSON: {exc}") from None
    if args.gpu_vram is None and (args.gpus is not None or args.model is not None):
        raise UsageError("--gpus and --model need --gpu-vram (the VRAM each GPU must have)")
    body: dict[str, Any] = {"type": args.type, "payload": payload}
    options = {
        "priority": args.priority,
        "delay_s": args.delay,
        "idempotency_key": args.idempotency_key,
        "max_attempts": args.max_attempts,
    }
    body.update({k: v for k, v in options.items() if v is not None})
    if args.gpu_vram is not None:
        gpu = {"est_vram_mb": args.gpu_vram, "gpu_count": args.gpus, "model_id": args.model}
        body["gpu"] = {k: v for k, v in gpu.items() if v is not None}
    return body


def _submit(args: argparse.Namespace, settings: Settings) -> int:
    answer = api(settings, "POST", "/jobs/submit", submit_body(args))
    if not args.wait:
        if args.json:
            return show(answer)
        print(answer["job_id"])
        return 0
    job = wait_for(settings, answer["job_id"], args.timeout, ProgressLine(sys.stderr))
    if args.json:
        show(job)
    else:
        print(job_view(job))
    return 0 if job["status"] == JobStatus.DONE else 1


def wait_for(settings: Settings, job_id: str, timeout_s: float, line: ProgressLine) -> Any:
    """Poll the job until it finishes, showing how it does on `line`; the finished job."""
    start = time.monotonic()
    try:
        while True:
            job = api(settings, "GET", f"/jobs/{segment(job_id)}")
            elapsed = time.monotonic() - start
            line.update(_progress(job), elapsed)
            if job["status"] in TERMINAL_STATUSES:
                return job
            if elapsed > timeout_s:
                raise OrchestratorError(
                    f"job {job_id} is still {job['status']} after {timeout_s:g}s "
                    f"(`orchestrator get {job_id}` shows it later)"
                )
            time.sleep(POLL_S)
    except KeyboardInterrupt:
        line.end()
        print(f"stopped waiting; job {job_id} goes on", file=sys.stderr)
        raise
    finally:
        line.end()


def _progress(job: dict[str, Any]) -> str:
    text = f"{job['id']}: {job['status']}, attempt {job['attempts']}/{job['max_attempts']}"
    if job["status"] in (JobStatus.PENDING, JobStatus.FAILED) and job["available_at"]:
        due = datetime.fromisoformat(job["available_at"])
        if due > datetime.now(UTC):
            text += f", due {when(job['available_at'])}"
    if job["progress"] is not None and job["status"] not in TERMINAL_STATUSES:
        text += f", progress {compact(job['progress'], 80)}"
    return text


class ProgressLine:
    """How `submit --wait` shows its job on stderr: on a terminal, one line rewritten in
    place (with the time waited); otherwise a plain line per change, as a log reads best."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self._last = ""
        self._width = 0  # characters of the line now on the terminal

    def update(self, text: str, elapsed_s: float) -> None:
        if self.tty:
            text = f"{text}  [{elapsed_s:.0f}s]"
            text = text[: max(20, shutil.get_terminal_size().columns - 1)]
        if text == self._last:
            return
        self._last = text
        if self.tty:
            # Pad over the end of a longer previous line; stay on the line (no newline).
            self.stream.write("\r" + text + " " * max(0, self._width - len(text)))
            self._width = len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def end(self) -> None:
        """Leave the line's last state on screen and move below it (once)."""
        if self.tty and self._width:
            self.stream.write("\n")
            self.stream.flush()
            self._width = 0


# -- reading -------------------------------------------------------------------------------


def _show_job(args: argparse.Namespace, settings: Settings) -> int:
    job = api(settings, "GET", f"/jobs/{segment(args.job_id)}")
    events = None
    if args.events:
        events = api(settings, "GET", f"/jobs/{segment(args.job_id)}/events")["events"]
    if args.json:
        return show(job if events is None else {**job, "events": events})
    print(job_view(job))
    if events is not None:
        print()
        print(events_table(events))
    return 0


def job_view(job: dict[str, Any]) -> str:
    """A job as aligned `field  value` lines; long values cut (`--json` shows them whole)."""
    waiting = job["status"] in (JobStatus.PENDING, JobStatus.FAILED)
    gpu = job.get("gpu")

    def value(name: str) -> str | None:
        return None if job[name] is None else compact(job[name], VALUE_LIMIT)

    return fields(
        [
            ("id", job["id"]),
            ("type", job["type"]),
            ("status", job["status"] + (" (cancel requested)" if job["cancel_requested"] else "")),
            ("priority", job["priority"]),
            ("attempts", f"{job['attempts']} of {job['max_attempts']}"),
            ("worker", job["worker"]),
            ("created", when(job["created_at"])),
            ("due", when(job["available_at"]) if waiting else None),
            ("started", when(job["started_at"])),
            ("finished", when(job["finished_at"])),
            ("timeout", f"{job['timeout_s']:g}s"),
            ("idempotency key", job["idempotency_key"]),
            ("gpu", _gpu_text(gpu) if gpu else None),
            ("payload", compact(job["payload"], VALUE_LIMIT)),
            (
                "progress",
                None if job["progress"] is None else compact(job["progress"], VALUE_LIMIT),
            ),
            ("result", None if job["result"] is None else compact(job["result"], VALUE_LIMIT)),
            ("error", job["error"]),
        ]
    )


def _gpu_text(gpu: dict[str, Any]) -> str:
    text = f"{gpu['est_vram_mb']} MB on each of {gpu.get('gpu_count') or 1} GPU(s)"
    return text + (f", model {gpu['model_id']}" if gpu.get("model_id") else "")


def events_table(events: list[dict[str, Any]]) -> str:
    rows = [
        (
            when(e["at"]),
            e["event"],
            e["status"],
            e["attempt"],
            e["actor"],
            compact(e["detail"], 60) if e["detail"] else None,
        )
        for e in events
    ]
    return table(rows, ["AT", "EVENT", "STATUS", "ATTEMPT", "ACTOR", "DETAIL"])


def _list(args: argparse.Namespace, settings: Settings) -> int:
    params = {"status": args.status, "type": args.type, "limit": args.limit, "cursor": args.cursor}
    query = urlencode({k: v for k, v in params.items() if v is not None})
    page = api(settings, "GET", f"/jobs?{query}")
    if args.json:
        return show(page)
    print_jobs(page, "no jobs", lambda: f"orchestrator jobs list {_again(args)}")
    return 0


def _again(args: argparse.Namespace) -> str:
    """The options of this listing, for the hint that fetches its next page."""
    given = [("--status", args.status), ("--type", args.type), ("--limit", args.limit)]
    return " ".join(f"{flag} {value}" for flag, value in given if value not in (None, 50))


def print_jobs(page: dict[str, Any], empty: str, command: Callable[[], str]) -> None:
    """A page of jobs as a table, and (on stderr) how to get the next page."""
    if not page["jobs"]:
        print(empty)
        return
    rows = [
        (
            j["id"],
            j["type"],
            j["status"],
            j["priority"],
            f"{j['attempts']}/{j['max_attempts']}",
            when(j["created_at"]),
            compact(j["error"], 50) if j["error"] else None,
        )
        for j in page["jobs"]
    ]
    print(table(rows, ["ID", "TYPE", "STATUS", "PRIORITY", "TRIES", "CREATED", "ERROR"]))
    if page["next_cursor"]:
        more = f"{command()} --cursor {page['next_cursor']}".replace("  ", " ")
        print(f"more: {more}", file=sys.stderr)


# -- cancel --------------------------------------------------------------------------------


def _cancel(args: argparse.Namespace, settings: Settings) -> int:
    def cancel(job_id: str) -> Any:
        return api(settings, "POST", f"/jobs/{segment(job_id)}/cancel")

    jobs, failed = for_each(args.job_ids, cancel)
    if args.json:
        show(jobs)
    else:
        for job in jobs:
            if job["status"] == JobStatus.CANCELLED:
                print(f"{job['id']}: cancelled")
            else:
                print(
                    f"{job['id']}: cancel requested ({job['status']}; it stops at its next check)"
                )
    return 1 if failed else 0
