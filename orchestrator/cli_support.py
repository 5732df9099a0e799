"""What every CLI command shares: calling the API, printing JSON and tables."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import httpx

from orchestrator.errors import OrchestratorError
from orchestrator.settings import Settings


def api(settings: Settings, method: str, path: str, body: Any = None) -> Any:
    """Call the API; an error answer raises `OrchestratorError` with its message."""
    url = settings.resolved_api_url().rstrip("/") + path
    response = httpx.request(method, url, json=body, timeout=30)
    try:
        data = response.json()
    except ValueError:
        text = " ".join(response.text.split())
        data = {"message": f"not an orchestrator answer: {text[:200]}"}
    if response.status_code >= 400:
        message = data.get("message", data) if isinstance(data, dict) else data
        raise OrchestratorError(f"{response.status_code} {message}")
    return data


def show(data: Any) -> int:
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
