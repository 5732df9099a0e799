"""What every CLI command shares: calling the API, printing JSON, tables and fields."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Collection, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx

from orchestrator import __version__
from orchestrator.errors import OrchestratorError
from orchestrator.settings import Settings

TIMEOUT_S = 30.0


class UsageError(OrchestratorError):
    """Arguments that parse but do not make sense together: exit 2, as argparse's own."""

    code = "usage"


def api(
    settings: Settings,
    method: str,
    path: str,
    body: Any = None,
    *,
    accept: Collection[int] = (),
) -> Any:
    """Call the API and return its decoded answer; an error status raises
    `OrchestratorError("<status> <message>")`, except those in `accept`, whose body is
    returned like a success's."""
    url = settings.resolved_api_url().rstrip("/") + path
    headers = {"user-agent": f"orchestrator-cli/{__version__}"}
    if settings.api_token:
        headers["authorization"] = f"Bearer {settings.api_token}"
    response = httpx.request(method, url, json=body, headers=headers, timeout=TIMEOUT_S)
    if response.status_code == 204:
        return None
    try:
        data = response.json()
    except ValueError:
        text = " ".join(response.text.split())
        data = {"message": f"not an orchestrator answer: {text[:200] or response.reason_phrase}"}
    if response.status_code >= 400 and response.status_code not in accept:
        message = data.get("message", data) if isinstance(data, dict) else data
        if response.status_code == 401:
            message = f"{message} (set ORCH_API_TOKEN: `orchestrator tokens create` makes one)"
        raise OrchestratorError(f"{response.status_code} {message}")
    return data


def for_each(items: Iterable[str], call: Callable[[str], Any]) -> tuple[list[Any], int]:
    """`call` on each item (a job id, a lease token); an item the API refuses gets its
    `error:` line on stderr and the rest go on. The answers, and how many were refused."""
    answers, refused = [], 0
    for item in items:
        try:
            answers.append(call(item))
        except OrchestratorError as exc:
            print(f"error: {exc.message}", file=sys.stderr)
            refused += 1
    return answers, refused


def segment(value: str) -> str:
    """A value as one URL path segment: a slash in a typo must not reach another route."""
    return quote(value, safe="")


def json_flag(parser: argparse.ArgumentParser, *, under_parent: bool = False) -> None:
    """Add `--json`. `under_parent`: the parent command has `--json` too (`leases --json`
    and `leases list --json` both work), so this one must not reset it to False."""
    default = argparse.SUPPRESS if under_parent else False
    parser.add_argument("--json", action="store_true", default=default, help="print JSON")


def show(data: Any) -> int:
    """Print `data` as indented JSON (what `--json` prints)."""
    print(json.dumps(data, indent=2))
    return 0


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """Rows as an aligned text table under `headers` (None prints as '-')."""
    cells = [[str(h) for h in headers]] + [
        ["-" if v is None else str(v) for v in row] for row in rows
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def fields(pairs: Iterable[tuple[str, Any]]) -> str:
    """`name  value` lines, the values aligned (a value's further lines too); pairs whose
    value is None are left out."""
    shown = [(name, str(value)) for name, value in pairs if value is not None]
    width = max((len(name) for name, _ in shown), default=0)
    indent = "\n" + " " * (width + 2)
    return "\n".join(
        f"{name.ljust(width)}  {indent.join(value.splitlines())}".rstrip() for name, value in shown
    )


def compact(value: Any, limit: int | None = None) -> str:
    """A JSON value on one line, cut to `limit` characters."""
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    text = " ".join(text.split())
    return text if limit is None or len(text) <= limit else text[: limit - 3] + "..."


def when(stamp: str | None) -> str | None:
    """An API time (ISO-8601, UTC) as `YYYY-MM-DD HH:MM:SS` in UTC."""
    if stamp is None:
        return None
    return datetime.fromisoformat(stamp).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def age(stamp: str, now: datetime | None = None) -> str:
    """How long ago an API time was: `5s ago`, `3m ago`, `2h ago`."""
    seconds = max(0.0, ((now or datetime.now(UTC)) - datetime.fromisoformat(stamp)).total_seconds())
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.0f}h ago"
