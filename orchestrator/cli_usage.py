"""CLI command for GPU accounting: `usage` (GPU-seconds and VRAM-seconds per group)."""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from orchestrator.cli_support import UsageError, api, json_flag, show, table
from orchestrator.settings import Settings

GROUPS = ("owner", "agent", "type", "node")
_AGO = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def add_commands(sub: Any) -> None:
    """Add `usage` to the `orchestrator` parser (its `handler` is called as
    `handler(args, settings) -> exit code`)."""
    usage = sub.add_parser(
        "usage", help="GPU-seconds and VRAM-seconds of finished leases, per owner/agent/type/node"
    )
    usage.add_argument("--owner", help="only this owner (a submitter token: its own)")
    usage.add_argument("--agent", help="only this agent")
    usage.add_argument("--type", help="only this job type (a lease's operation)")
    usage.add_argument(
        "--since", help="leases that ended at or after: ISO-8601 (UTC), or an age such as 24h"
    )
    usage.add_argument("--until", help="leases that ended before: ISO-8601 (UTC), or an age")
    usage.add_argument("--group-by", choices=GROUPS, default="owner", help="default: owner")
    json_flag(usage)
    usage.set_defaults(handler=_usage)


def moment(value: str, now: datetime | None = None) -> str:
    """A `--since`/`--until` value as an ISO-8601 time: `90m`, `24h`, `7d` ago, or a time."""
    match = _AGO.match(value.strip())
    if match:
        ago = float(match.group(1)) * _UNIT_S[match.group(2)]
        return ((now or datetime.now(UTC)) - timedelta(seconds=ago)).isoformat()
    try:
        return datetime.fromisoformat(value).isoformat()
    except ValueError:
        raise UsageError(f"not a time or an age (e.g. 24h): {value!r}") from None


def _usage(args: argparse.Namespace, settings: Settings) -> int:
    params: dict[str, str] = {"group_by": args.group_by}
    for key in ("owner", "agent", "type"):
        if getattr(args, key):
            params[key] = getattr(args, key)
    for key in ("since", "until"):
        if getattr(args, key):
            params[key] = moment(getattr(args, key))
    report = api(settings, "GET", "/usage?" + urlencode(params))
    if args.json:
        return show(report)
    print(usage_table(report))
    return 0


def usage_table(report: dict[str, Any]) -> str:
    """The report's groups and their total as a table; hours for readability."""
    if not report["groups"]:
        return "no usage recorded for this selection"
    headers = [report["group_by"].upper(), "LEASES", "GPU-HOURS", "EST VRAM GB-H", "PEAK VRAM GB-H"]
    rows = [_row(g, g["key"]) for g in report["groups"]]
    rows.append(_row(report["total"], "(total)"))
    return table(rows, headers)


def _row(group: dict[str, Any], key: str | None) -> list[Any]:
    peak = group["vram_mb_seconds_peak"] / 1024 / 3600
    measured = group["measured_leases"]
    return [
        "(none)" if key is None else key,
        group["leases"],
        f"{group['gpu_seconds'] / 3600:.3f}",
        f"{group['vram_mb_seconds_est'] / 1024 / 3600:.3f}",
        f"{peak:.3f} ({measured} measured)" if measured else "-",
    ]
