"""CLI commands for operators: `status`, `leader`, `reclaim`, `dlq list|replay`."""

from __future__ import annotations

import argparse
from collections import Counter
from typing import Any
from urllib.parse import urlencode

from orchestrator.cli_jobs import print_jobs
from orchestrator.cli_support import api, fields, for_each, json_flag, segment, show, table, when
from orchestrator.jobs import Priority
from orchestrator.settings import Settings


def add_commands(sub: Any) -> None:
    """Add this area's subcommands to the `orchestrator` parser; each sets `handler`
    (called as `handler(args, settings) -> exit code`)."""
    status = sub.add_parser("status", help="leader, queues, GPUs, pools and workers at a glance")
    json_flag(status)
    status.set_defaults(handler=_status)

    leader = sub.add_parser("leader", help="show which replica leads, and its epoch")
    json_flag(leader)
    leader.set_defaults(handler=_leader)

    reclaim = sub.add_parser("reclaim", help="run one reclaim pass now")
    json_flag(reclaim)
    reclaim.set_defaults(handler=_reclaim)

    dlq = sub.add_parser("dlq", help="the dead-letter queue: list, replay")
    actions = dlq.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="dead-lettered jobs, newest first")
    listing.add_argument("--type", help="only this job type")
    listing.add_argument("--limit", type=int, default=50, help="most jobs shown (default 50)")
    listing.add_argument("--cursor", help="where the previous page ended (it prints it)")
    json_flag(listing)
    listing.set_defaults(handler=_dlq_list)
    replay = actions.add_parser("replay", help="run dead-lettered jobs again, with fresh attempts")
    replay.add_argument("job_ids", nargs="+", metavar="JOB_ID")
    json_flag(replay)
    replay.set_defaults(handler=_dlq_replay)


# -- status ------------------------------------------------------------------------------


def _status(args: argparse.Namespace, settings: Settings) -> int:
    state = {
        "leader": api(settings, "GET", "/leader"),
        # 503 is the answer "not ready", with the reasons: part of the picture, not an error.
        "ready": api(settings, "GET", "/ready", accept=(503,)),
        "queues": api(settings, "GET", "/queues")["queues"],
        "gpus": api(settings, "GET", "/gpu_state"),
        "pools": api(settings, "GET", "/pools")["pools"],
        "workers": api(settings, "GET", "/workers")["workers"],
    }
    if args.json:
        return show(state)
    print(status_screen(state))
    return 0


def status_screen(state: dict[str, Any]) -> str:
    """Everything `status` gathered, as one screen of short sections."""
    ready = state["ready"]
    leader = state["leader"]
    leads = (
        f"{leader['leader_id']} (epoch {leader['epoch']}, since {when(leader['since'])})"
        if leader["leader_id"]
        else f"none (epoch {leader['epoch']}): delayed jobs, retries and recovery wait"
    )
    head = fields(
        [
            ("leader", leads),
            ("ready", "yes" if ready.get("status") == "ready" else f"no: {ready.get('message')}"),
        ]
    )
    sections = [head, _queues(state["queues"]), _gpus(state["gpus"])]
    sections += [_pools(state["pools"]), _workers(state["workers"])]
    return "\n\n".join(sections)


def _queues(queues: list[dict[str, Any]]) -> str:
    if not queues:
        return "queues: no unfinished or dead-lettered jobs"
    bands = [p.label for p in Priority]
    rows = [
        (
            q["type"],
            q["pending"],
            q["failed"],
            q["claimed"],
            q["running"],
            q["dead_letter"],
            " ".join(f"{b}:{q['by_priority'][b]}" for b in bands if q["by_priority"].get(b)),
        )
        for q in queues
    ]
    headers = ["QUEUE", "PENDING", "RETRYING", "CLAIMED", "RUNNING", "DEAD", "WAITING BY PRIORITY"]
    return table(rows, headers)


def _gpus(state: dict[str, Any]) -> str:
    if not state["gpus"]:
        return "GPUs: none reported"
    rows = [
        (
            g["node"],
            g["index"],
            g["name"],
            g["memory_total_mb"],
            g["leased_mb"],
            g["leasable_mb"],
            len(g["leases"]),
            "stale" if g["stale"] else g["health"],
        )
        for g in state["gpus"]
    ]
    text = table(
        rows, ["NODE", "GPU", "NAME", "TOTAL MB", "LEASED MB", "FREE MB", "LEASES", "HEALTH"]
    )
    notes = [f"{len(state['waiting'])} lease request(s) waiting"] if state["waiting"] else []
    notes += ["SAFE_MODE is on: no leases are granted"] if state["safe_mode"] else []
    return "\n".join([text, *notes])


def _pools(pools: list[dict[str, Any]]) -> str:
    if not pools:
        return "pools: none"
    rows = [
        (
            p["name"],
            p["status"],
            p["node"] or "*",
            f"{p['running']}/{p['desired']}",
            ",".join(p["job_types"]),
        )
        for p in pools
    ]
    return table(rows, ["POOL", "STATUS", "NODE", "RUNNING", "TYPES"])


def _workers(workers: list[dict[str, Any]]) -> str:
    """Live workers per node and pool, with how many jobs they run (`workers` lists each)."""
    alive = [w for w in workers if w["alive"]]
    if not alive:
        return f"workers: none alive ({len(workers)} registered)"
    count: Counter[tuple[str, str]] = Counter()
    busy: Counter[tuple[str, str]] = Counter()
    for w in alive:
        key = (w["node"], w["pool"] or "-")
        count[key] += 1
        busy[key] += len(w["current_jobs"])
    rows = [(node, pool, count[node, pool], busy[node, pool]) for node, pool in sorted(count)]
    return table(rows, ["NODE", "POOL", "WORKERS", "JOBS RUNNING"])


# -- leader and reclaim ---------------------------------------------------------------------


def _leader(args: argparse.Namespace, settings: Settings) -> int:
    leader = api(settings, "GET", "/leader")
    if args.json:
        return show(leader)
    answered = leader["instance_id"] + (" (the leader)" if leader["is_leader"] else "")
    print(
        fields(
            [
                ("leader", leader["leader_id"] or "none"),
                ("epoch", leader["epoch"]),
                ("since", when(leader["since"])),
                ("expires", when(leader["expires_at"])),
                ("answered by", answered),
            ]
        )
    )
    return 0


def _reclaim(args: argparse.Namespace, settings: Settings) -> int:
    report = api(settings, "POST", "/control/reclaim")
    if args.json:
        return show(report)
    print(
        f"scanned {report['scanned']}, requeued {report['requeued']}, "
        f"dead-lettered {report['dead_lettered']}, republished {report['republished']}"
    )
    return 0


# -- the DLQ --------------------------------------------------------------------------------


def _dlq_list(args: argparse.Namespace, settings: Settings) -> int:
    params = {"type": args.type, "limit": args.limit, "cursor": args.cursor}
    page = api(settings, "GET", "/dlq?" + urlencode({k: v for k, v in params.items() if v}))
    if args.json:
        return show(page)
    again = "orchestrator dlq list" + (f" --type {args.type}" if args.type else "")
    print_jobs(page, "no dead-lettered jobs", lambda: again)
    return 0


def _dlq_replay(args: argparse.Namespace, settings: Settings) -> int:
    def replay(job_id: str) -> Any:
        return api(settings, "POST", f"/dlq/{segment(job_id)}/replay")

    jobs, refused = for_each(args.job_ids, replay)
    if args.json:
        show(jobs)
    else:
        for job in jobs:
            print(f"{job['id']}: {job['status']}")
    return 1 if refused else 0
