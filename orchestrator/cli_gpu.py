"""CLI commands for GPUs and leases: `gpu`, `leases`, `policy`."""

from __future__ import annotations

import argparse
import json
import urllib.parse
from typing import Any

from orchestrator.cli_support import api, for_each, json_flag, segment, show, table, when
from orchestrator.errors import OrchestratorError
from orchestrator.settings import Settings


def add_commands(sub: Any) -> None:
    """Add this area's subcommands to the `orchestrator` parser; each sets `handler`
    (called as `handler(args, settings) -> exit code`)."""
    gpu = sub.add_parser("gpu", help="the GPUs of every node (the default), clear a quarantine")
    json_flag(gpu)
    gpu_sub = gpu.add_subparsers(dest="gpu_command", metavar="ACTION")
    json_flag(gpu_sub.add_parser("show", help="every device and its leases"), under_parent=True)
    clear = gpu_sub.add_parser("clear", help="lift a device's quarantine (admin)")
    clear.add_argument("node")
    clear.add_argument("index", type=int)
    json_flag(clear, under_parent=True)
    gpu.set_defaults(handler=_gpu, gpu_command="show")

    leases = sub.add_parser("leases", help="GPU leases: list (the default), take, release")
    json_flag(leases)
    leases_sub = leases.add_subparsers(dest="leases_command", metavar="ACTION")
    listing = leases_sub.add_parser("list", help="active leases (the default)")
    listing.add_argument("--all", action="store_true", help="waiting ones too")
    json_flag(listing, under_parent=True)
    take = leases_sub.add_parser("take", help="take a lease (prints its token)")
    take.add_argument("agent")
    take.add_argument("est_vram_mb", type=int)
    take.add_argument("--gpus", type=int, default=1, help="devices on one node (gang)")
    take.add_argument("--ttl", type=float, help="seconds it lives without a heartbeat")
    take.add_argument("--wait", type=float, default=0.0, help="seconds to queue for room")
    take.add_argument("--priority", choices=["critical", "high", "normal", "low"])
    take.add_argument("--node")
    json_flag(take, under_parent=True)
    release = leases_sub.add_parser("release", help="release leases")
    release.add_argument("tokens", nargs="+", metavar="TOKEN")
    json_flag(release, under_parent=True)
    leases.set_defaults(handler=_leases, leases_command="list", all=False)

    # The policy is a JSON document: it prints as JSON with or without --json.
    policy = sub.add_parser("policy", help="the admission policy (JSON)")
    json_flag(policy)
    policy_sub = policy.add_subparsers(dest="policy_command", metavar="ACTION")
    json_flag(policy_sub.add_parser("show", help="print it (the default)"), under_parent=True)
    set_policy = policy_sub.add_parser("set", help="replace it with a JSON document")
    set_policy.add_argument("document", help="JSON, e.g. '{\"ageing_s\": 30}'")
    json_flag(set_policy, under_parent=True)
    policy.set_defaults(handler=_policy, policy_command="show")


def _gpu(args: argparse.Namespace, settings: Settings) -> int:
    if args.gpu_command == "clear":
        return _clear(args, settings)
    state = api(settings, "GET", "/gpu_state")
    if args.json:
        return show(state)
    if not state["gpus"]:
        print("no GPUs reported (set ORCH_GPU_SIMULATE to simulate some, e.g. 2x24576)")
    rows = [
        [
            g["node"],
            g["index"],
            g["name"],
            f"{g['memory_used_mb']}/{g['memory_total_mb']}",
            g["leased_mb"],
            g["leasable_mb"],
            _num(g["utilization_gpu_pct"], "%"),
            _num(g["temperature_c"], "C"),
            "stale" if g["stale"] else "quarantined" if g.get("quarantined") else g["health"],
            len(g["leases"]),
        ]
        for g in state["gpus"]
    ]
    sick = [g for g in state["gpus"] if g.get("quarantined")]
    if rows:
        headers = ["NODE", "GPU", "NAME", "USED/TOTAL MB", "LEASED MB", "FREE MB", "UTIL"]
        print(table(rows, [*headers, "TEMP", "HEALTH", "LEASES"]))
    for g in sick:
        print(
            f"\n{g['node']}/{g['index']} quarantined since {when(g['quarantined_since'])} UTC: "
            f"{g['quarantine_reason']}\n  (orchestrator gpu clear {g['node']} {g['index']})"
        )
    if state["waiting"]:
        print(f"\n{len(state['waiting'])} lease request(s) waiting")
    if state["safe_mode"]:
        print("\nSAFE_MODE is on: no leases are granted")
    return 0


def _clear(args: argparse.Namespace, settings: Settings) -> int:
    node = urllib.parse.quote(args.node, safe="")
    answer = api(settings, "POST", f"/gpu/{node}/{args.index}/clear")
    if args.json:
        return show(answer)
    if answer["cleared"]:
        was = answer["quarantine"]["reason"]
        print(f"{args.node}/{args.index}: quarantine cleared (was: {was})")
    else:
        print(f"{args.node}/{args.index} was not quarantined; nothing changed")
    return 0


def _leases(args: argparse.Namespace, settings: Settings) -> int:
    if args.leases_command == "take":
        body: dict[str, Any] = {
            "agent": args.agent,
            "est_vram_mb": args.est_vram_mb,
            "gpu_count": args.gpus,
            "wait_s": args.wait,
        }
        for key, value in (("ttl_s", args.ttl), ("priority", args.priority), ("node", args.node)):
            if value is not None:
                body[key] = value
        lease = api(settings, "POST", "/leases", body)
        if args.json:
            return show(lease)
        devices = ",".join(map(str, lease["devices"]))
        until = when(lease["expires_at"])
        print(f"{lease['token']}  {lease['node']} devices {devices}, until {until} UTC")
        return 0
    if args.leases_command == "release":

        def release(token: str) -> Any:
            return api(settings, "POST", f"/leases/{segment(token)}/release", {})

        released, refused = for_each(args.tokens, release)
        if args.json:
            show(released)
        else:
            for lease in released:
                print(f"{lease['token']}: {lease['status']}")
        return 1 if refused else 0
    query = "?status=active&status=waiting" if args.all else ""
    found = api(settings, "GET", f"/leases{query}")["leases"]
    if args.json:
        return show(found)
    if not found:
        print("no active leases")
        return 0
    rows = [
        [
            lease["token"][:12],
            lease["agent"],
            lease["status"],
            lease["node"],
            ",".join(map(str, lease["devices"])),
            lease["est_vram_mb"],
            lease["priority"],
            lease["job_id"],
            when(lease["expires_at"]),
        ]
        for lease in found
    ]
    headers = ["TOKEN", "AGENT", "STATUS", "NODE", "GPUS", "MB EACH", "PRIORITY", "JOB"]
    print(table(rows, [*headers, "EXPIRES"]))
    return 0


def _policy(args: argparse.Namespace, settings: Settings) -> int:
    if args.policy_command == "set":
        try:
            document = json.loads(args.document)
        except ValueError as exc:
            raise OrchestratorError(f"the policy is not JSON: {exc}") from None
        return show(api(settings, "POST", "/policy", document))
    return show(api(settings, "GET", "/policy"))


def _num(value: float | None, unit: str) -> str:
    return "-" if value is None else f"{value:g}{unit}"
