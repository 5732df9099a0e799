"""The settings table of docs/configuration.md, generated from `Settings` so it cannot drift."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from orchestrator.settings import Settings

BEGIN = "<!-- settings:begin -->"
END = "<!-- settings:end -->"


def _default(value: Any) -> str:
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if value == "":
        return '`""`'
    return f"`{value}`"


def settings_table() -> str:
    lines = ["| Variable | Default | Description |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        lines.append(
            f"| `ORCH_{name.upper()}` | {_default(field.default)} | {field.description or ''} |"
        )
    return "\n".join(lines)


def render(markdown: str) -> str:
    """`markdown` with the table between the markers replaced by the current one."""
    head, _, rest = markdown.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return f"{head}{BEGIN}\n{settings_table()}\n{END}{tail}"


def update(path: Path) -> bool:
    """Rewrite the table in `path`; True when it changed."""
    before = path.read_text()
    after = render(before)
    if after != before:
        path.write_text(after)
    return after != before
