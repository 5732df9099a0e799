"""CLI commands for worker pools and workers: `pools`, `workers`, `node`.

`pools` and `workers` talk to the API; `node` runs a node supervisor on this host, against
the database directly (see `workers/supervisor.py`).
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from orchestrator.cli_support import age, api, fields, json_flag, segment, show, table
from orchestrator.settings import Settings


def _csv(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def add_commands(sub: Any) -> None:
    """Add this area's subcommands to the `orchestrator` parser; each sets `handler`
    (called as `handler(args, settings) -> exit code`)."""
    pools = sub.add_parser(
        "pools", help="worker pools: list (the default), create, scale, drain, stop"
    )
    json_flag(pools)
    pools.set_defaults(handler=_list, node=None)
    actions = pools.add_subparsers(dest="pools_command", metavar="ACTION")

    listing = actions.add_parser("list", help="list the pools")
    listing.add_argument("--node", help="only the pools this node's supervisor keeps")
    _json_flag(listing).set_defaults(handler=_list)

    one = actions.add_parser("show", help="show a pool and its workers")
    one.add_argument("name")
    _json_flag(one).set_defaults(handler=_show_pool)

    create = actions.add_parser("create", help="create a pool")
    create.add_argument("name")
    create.add_argument("--types", type=_csv, required=True, help="job types, comma-separated")
    create.add_argument("--node", help="the node whose supervisor runs it (default: every node)")
    create.add_argument("--model", dest="model_id", help="the model its workers serve")
    create.add_argument("--concurrency", type=int, help="handler threads per worker")
    create.add_argument("--desired", type=int, help="workers wanted now (default 1)")
    create.add_argument("--min-warm", type=int, help="workers kept when idle (default 0)")
    create.add_argument("--max-workers", type=int, help="most workers (default: desired)")
    create.add_argument(
        "--idle-timeout", type=float, help="seconds idle before scaling to min-warm (default 300)"
    )
    _json_flag(create).set_defaults(handler=_create)

    scale = actions.add_parser("scale", help="set how many workers a pool wants")
    scale.add_argument("name")
    scale.add_argument("desired", type=int)
    _json_flag(scale).set_defaults(handler=_scale)

    update = actions.add_parser("update", help="change a pool's autoscaling bounds")
    update.add_argument("name")
    update.add_argument("--min-warm", type=int)
    update.add_argument("--max-workers", type=int)
    update.add_argument("--idle-timeout", type=float)
    _json_flag(update).set_defaults(handler=_update)

    for action, about in (
        ("drain", "let a pool's workers finish their jobs and exit"),
        ("stop", "stop a pool now: its workers give their jobs back"),
        ("resume", "make a drained or stopped pool active again"),
    ):
        parser = actions.add_parser(action, help=about)
        parser.add_argument("name")
        _json_flag(parser).set_defaults(handler=_transition, action=action)

    delete = actions.add_parser("delete", help="delete a stopped pool")
    delete.add_argument("name")
    delete.set_defaults(handler=_delete)

    policy = actions.add_parser("policy", help="run one pass of the leader's pool policy now")
    _json_flag(policy).set_defaults(handler=_policy)

    workers = sub.add_parser("workers", help="list registered workers and their jobs")
    workers.add_argument("--pool", help="only this pool's workers")
    workers.add_argument("--node", help="only this node's workers")
    workers.add_argument("--all", action="store_true", help="include stopped workers")
    json_flag(workers)
    workers.set_defaults(handler=_workers)

    node = sub.add_parser("node", help="run the node supervisor of this host's worker pools")
    node.add_argument("--node", help="this node's name (ORCH_NODE_NAME; default: hostname)")
    node.add_argument(
        "--import",
        dest="imports",
        type=_csv,
        default=[],
        help="modules with @handler functions, for its workers, comma-separated",
    )
    node.set_defaults(handler=_node)


def _json_flag(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """`--json` on a `pools` action (`pools --json ACTION` works too)."""
    json_flag(parser, under_parent=True)
    return parser


# -- pools --------------------------------------------------------------------------------------


def _list(args: argparse.Namespace, settings: Settings) -> int:
    query = f"?{urlencode({'node': args.node})}" if args.node else ""
    data = api(settings, "GET", f"/pools{query}")
    if args.json:
        return show(data)
    if not data["pools"]:
        print("no pools")
        return 0
    rows = [
        (
            p["name"],
            p["status"],
            p["node"] or "*",
            f"{p['running']}/{p['desired']}",
            f"{p['min_warm']}-{p['max_workers']}",
            p["concurrency"],
            ",".join(p["job_types"]),
        )
        for p in data["pools"]
    ]
    print(table(rows, ["NAME", "STATUS", "NODE", "RUNNING", "MIN-MAX", "CONC", "TYPES"]))
    return 0


def _show_pool(args: argparse.Namespace, settings: Settings) -> int:
    pool = api(settings, "GET", f"/pools/{_name(args.name)}")
    if args.json:
        return show(pool)
    fields = [
        ("status", pool["status"]),
        ("node", pool["node"] or "* (every node's supervisor)"),
        ("job types", ", ".join(pool["job_types"])),
        ("model", pool["model_id"]),
        ("workers", f"{pool['running']} running, {pool['desired']} desired"),
        ("bounds", f"min_warm {pool['min_warm']}, max_workers {pool['max_workers']}"),
        ("concurrency", pool["concurrency"]),
        ("idle timeout", f"{pool['idle_timeout_s']:g}s"),
        ("last busy", pool["last_busy_at"]),
        ("updated", pool["updated_at"]),
    ]
    print(table(fields, ["POOL", pool["name"]]))
    if pool.get("workers"):
        print()
        print(_workers_table(pool["workers"]))
    return 0


def _create(args: argparse.Namespace, settings: Settings) -> int:
    body: dict[str, Any] = {"name": args.name, "job_types": args.types}
    options = {
        "node": args.node,
        "model_id": args.model_id,
        "concurrency": args.concurrency,
        "desired": args.desired,
        "min_warm": args.min_warm,
        "max_workers": args.max_workers,
        "idle_timeout_s": args.idle_timeout,
    }
    body.update({k: v for k, v in options.items() if v is not None})
    return _print_pool(args, api(settings, "POST", "/pools", body))


def _scale(args: argparse.Namespace, settings: Settings) -> int:
    body = {"desired": args.desired}
    return _print_pool(args, api(settings, "POST", f"/pools/{_name(args.name)}/scale", body))


def _update(args: argparse.Namespace, settings: Settings) -> int:
    options = {
        "min_warm": args.min_warm,
        "max_workers": args.max_workers,
        "idle_timeout_s": args.idle_timeout,
    }
    body = {k: v for k, v in options.items() if v is not None}
    return _print_pool(args, api(settings, "PATCH", f"/pools/{_name(args.name)}", body))


def _transition(args: argparse.Namespace, settings: Settings) -> int:
    pool = api(settings, "POST", f"/pools/{_name(args.name)}/{args.action}")
    return _print_pool(args, pool)


def _delete(args: argparse.Namespace, settings: Settings) -> int:
    api(settings, "DELETE", f"/pools/{_name(args.name)}")
    print(f"{args.name}: deleted")
    return 0


def _policy(args: argparse.Namespace, settings: Settings) -> int:
    report = api(settings, "POST", "/control/pool-policy")
    if args.json:
        return show(report)
    resized = ", ".join(f"{name} to {n}" for name, n in report["resized"].items())
    print(
        fields(
            [
                ("resized", resized or "none"),
                ("lost workers", ", ".join(report["lost_workers"]) or "none"),
                ("stopped pools", ", ".join(report["stopped_pools"]) or "none"),
                ("pruned workers", report["pruned_workers"]),
            ]
        )
    )
    return 0


def _print_pool(args: argparse.Namespace, pool: dict[str, Any]) -> int:
    if args.json:
        return show(pool)
    print(
        f"{pool['name']}: {pool['status']}, desired {pool['desired']} "
        f"(min_warm {pool['min_warm']}, max_workers {pool['max_workers']}), "
        f"running {pool['running']}"
    )
    return 0


def _name(name: str) -> str:
    return segment(name)


# -- workers and nodes ------------------------------------------------------------------------


def _workers(args: argparse.Namespace, settings: Settings) -> int:
    params = {k: v for k, v in (("pool", args.pool), ("node", args.node)) if v}
    if args.all:
        params["all"] = "true"
    query = f"?{urlencode(params)}" if params else ""
    data = api(settings, "GET", f"/workers{query}")
    if args.json:
        return show(data)
    if not data["workers"]:
        print("no workers")
        return 0
    print(_workers_table(data["workers"]))
    return 0


def _workers_table(workers: list[dict[str, Any]]) -> str:
    now = datetime.now(UTC)
    rows = [
        (
            w["id"],
            w["node"],
            w["pool"],
            w["pid"],
            w["status"] if w["alive"] or w["status"] in ("stopped", "lost") else "silent",
            age(w["heartbeat_at"], now),
            ",".join(w["current_jobs"]) or "-",
        )
        for w in workers
    ]
    return table(rows, ["ID", "NODE", "POOL", "PID", "STATUS", "HEARTBEAT", "JOBS"])


def _node(args: argparse.Namespace, settings: Settings) -> int:
    from workers.supervisor import run_node

    if args.node:
        settings = settings.model_copy(update={"node_name": args.node})
    return run_node(settings, imports=args.imports)
