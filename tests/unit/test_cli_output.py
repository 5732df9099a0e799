"""What the CLI prints, without a server: the progress line, tables and fields, submit
bodies; and the token from the settings, in the CLI and in the client."""

from __future__ import annotations

import argparse
import io
import os
from typing import Any

import httpx
import pytest

from orchestrator import cli_jobs
from orchestrator.cli import build_parser
from orchestrator.cli_jobs import ProgressLine, submit_body
from orchestrator.cli_support import UsageError, compact, fields, table
from orchestrator.client import OrchestratorClient
from orchestrator.errors import OrchestratorError


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_line__on_a_terminal_rewrites_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_jobs.shutil, "get_terminal_size", lambda: os.terminal_size((40, 24)))
    screen = Terminal()
    line = ProgressLine(screen)

    line.update("j1: pending, attempt 0/3", 0.2)
    line.update("j1: pending, attempt 0/3", 0.3)  # the same text: nothing written
    line.update('j1: running, attempt 1/3, progress {"step":1234567890}', 1.6)
    line.update("j1: done, attempt 1/3", 2.0)
    line.end()
    line.end()

    frames = screen.getvalue().split("\r")[1:]
    assert frames[0] == "j1: pending, attempt 0/3  [0s]"
    assert frames[1] == 'j1: running, attempt 1/3, progress {"st'  # cut to the width
    # A shorter line is padded over the longer one before it; one newline at the end.
    assert frames[2] == "j1: done, attempt 1/3  [2s]".ljust(39) + "\n"
    assert screen.getvalue().count("\n") == 1


def test_progress_line__elsewhere_prints_a_line_per_change() -> None:
    log = io.StringIO()
    line = ProgressLine(log)

    for text, elapsed in [("a: pending", 0.1), ("a: pending", 0.4), ("a: done", 0.7)]:
        line.update(text, elapsed)
    line.end()

    assert log.getvalue() == "a: pending\na: done\n"


def test_table_and_fields__align_and_skip_what_is_missing() -> None:
    assert table([("a", None), ("bbb", 2)], ["X", "Y"]) == "X    Y\na    -\nbbb  2"
    assert fields([("id", "j1"), ("worker", None), ("error", "one\ntwo")]) == (
        "id     j1\nerror  one\n       two"
    )
    assert compact({"a": [1, 2]}) == '{"a":[1,2]}'
    assert compact("x" * 50, 10) == "xxxxxxx..."


def _submit_args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["submit", *argv])


def test_submit_body__every_option() -> None:
    args = _submit_args(
        *("gpu_job", "--payload", '{"n": 1}', "--priority", "high", "--gpu-vram", "8000"),
        *("--gpus", "2", "--model", "m", "--delay", "5", "--idempotency-key", "k"),
        *("--max-attempts", "4"),
    )
    assert submit_body(args) == {
        "type": "gpu_job",
        "payload": {"n": 1},
        "priority": "high",
        "delay_s": 5.0,
        "idempotency_key": "k",
        "max_attempts": 4,
        "gpu": {"est_vram_mb": 8000, "gpu_count": 2, "model_id": "m"},
    }
    assert submit_body(_submit_args("echo")) == {"type": "echo", "payload": {}}


@pytest.mark.parametrize("payload", ["{nope", "NaN", "[1, Infinity]"])
def test_submit_body__a_payload_that_is_not_json(payload: str) -> None:
    with pytest.raises(OrchestratorError, match="--payload is not JSON"):
        submit_body(_submit_args("echo", "--payload", payload))


def test_submit_body__gpu_options_need_the_vram() -> None:
    with pytest.raises(UsageError, match="need --gpu-vram"):
        submit_body(_submit_args("echo", "--model", "m"))


def test_client__sends_the_token_from_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Any] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return httpx.Response(200, json={"leases": []})

    transport = httpx.MockTransport(answer)
    monkeypatch.setenv("ORCH_API_TOKEN", "from-env")
    with OrchestratorClient("http://orch", transport=transport) as client:
        client.leases()
    with OrchestratorClient("http://orch", token="given", transport=transport) as client:
        client.leases()
    with OrchestratorClient("http://orch", token="", transport=transport) as client:
        client.leases()

    assert seen == ["Bearer from-env", "Bearer given", None]
