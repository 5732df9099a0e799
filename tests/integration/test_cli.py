"""The real `orchestrator` command against a live server, on both backends.

The server is the `System` app served by uvicorn in a thread, with an in-process worker; each
command is a real subprocess (`python -m orchestrator.cli ...`), so its output, its exit
code and its errors are what a user sees. Starting Python costs about half a second, so a
test runs several commands, and independent ones at once.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from orchestrator.gpu import SimulatedProbe
from orchestrator.gpu_health import FaultKind, FaultRules, GpuFault
from tests.integration.harness import System, wait_until

pytestmark = pytest.mark.slow
DEVICE_MB = 24576


class Cli:
    """Runs `orchestrator ARGS...` against one API, as a user would."""

    def __init__(self, url: str, cwd: Path, **env: str) -> None:
        base = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
        self.env = {**base, "ORCH_API_URL": url, "ORCH_LOG_LEVEL": "WARNING", **env}
        self.cwd = cwd

    def __call__(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "orchestrator.cli", *args],
            env=self.env,
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert "Traceback" not in result.stderr, result.stderr
        return result

    def ok(self, *args: str, timeout: float = 60) -> str:
        """Its stdout; the command must succeed."""
        result = self(*args, timeout=timeout)
        assert result.returncode == 0, f"{args}: {result.returncode} {result.stderr}"
        return result.stdout

    def json(self, *args: str) -> Any:
        """What `ARGS --json` prints, parsed."""
        return json.loads(self.ok(*args, "--json"))

    def many(self, *commands: tuple[str, ...]) -> list[subprocess.CompletedProcess[str]]:
        """Independent commands, run at once; their results in order."""
        with ThreadPoolExecutor(len(commands)) as pool:
            return list(pool.map(lambda args: self(*args), commands))


@contextmanager
def live_url(system: System) -> Iterator[str]:
    """`system`'s app served by uvicorn on a free 127.0.0.1 port (its lifespan, the engine,
    already runs under `system.client`)."""
    config = uvicorn.Config(
        system.client.app, host="127.0.0.1", port=0, lifespan="off", log_config=None
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started or not thread.is_alive(), 10, "uvicorn to start")
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def cli(system: System, tmp_path: Path) -> Iterator[Cli]:
    system.store.report_node(
        system.settings.resolved_node_name(),
        SimulatedProbe([DEVICE_MB, DEVICE_MB]).read(),
        system.services.clock.now(),
        system.settings.gpu_temp_limit_c,
    )
    system.start_worker()
    with live_url(system) as url:
        yield Cli(url, tmp_path)


def field(text: str, name: str) -> str:
    """The value of a `name  value` line that the CLI printed."""
    found = re.search(rf"^{re.escape(name)}  +(.*)$", text, re.MULTILINE)
    assert found, f"no {name!r} in {text!r}"
    return found.group(1)


def one_error_line(result: subprocess.CompletedProcess[str], code: int, start: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code, (result.returncode, result.stderr)
    assert len(lines) == 1 and lines[0].startswith(start), result.stderr


# -- jobs ------------------------------------------------------------------------------------


def test_cli__submit_wait_list_show_and_cancel(system: System, cli: Cli) -> None:
    with ThreadPoolExecutor(2) as pool:
        fail = ("submit", "fail", "--payload", '{"message": "boom"}', "--max-attempts", "1")
        waiting = pool.submit(cli, "submit", "block", "--wait", "--priority", "high")
        failing = pool.submit(cli, *fail, "--wait")
        wait_until(lambda: system.recorder.runs, 30, "the block job to run")
        # The waiting command is in its poll loop (it submitted the job): let it see `running`.
        time.sleep(1.0)
        system.recorder.release.set()
        done, failed = waiting.result(), failing.result()
    assert done.returncode == 0, done.stderr
    assert field(done.stdout, "status") == "done" and field(done.stdout, "priority") == "high"
    # Not a terminal: a plain progress line per change, ending with the outcome.
    assert ": running, attempt 1/3" in done.stderr
    assert done.stderr.strip().splitlines()[-1].endswith(": done, attempt 1/3")
    assert failed.returncode == 1 and "dead_letter" in failed.stdout and "boom" in failed.stdout

    delayed = (
        *("submit", "echo", "--payload", '{"n": 1}', "--delay", "3600", "--priority", "low"),
        *("--idempotency-key", "cli-k1", "--max-attempts", "2", "--gpu-vram", "1000"),
        *("--gpus", "1", "--model", "m-1"),
    )
    later = cli.ok(*delayed).strip()
    again = cli.json(*delayed)
    job = system.job(later)
    assert (job["status"], job["priority"], job["max_attempts"]) == ("pending", "low", 2)
    assert job["gpu"] == {"est_vram_mb": 1000, "gpu_count": 1, "model_id": "m-1"}
    assert again["job_id"] == later

    shown, events, listed, page, status = cli.many(
        ("jobs", "show", later, "--json"),
        ("get", later, "--events"),
        ("jobs", "list", "--type", "echo"),
        ("jobs", "--json"),
        ("jobs", "list", "--limit", "1"),
    )
    assert json.loads(shown.stdout)["idempotency_key"] == "cli-k1"
    assert "submitted" in events.stdout and "due" in events.stdout
    assert later in listed.stdout and listed.stdout.startswith("ID")
    assert {j["id"] for j in json.loads(page.stdout)["jobs"]} >= {later}
    assert len(status.stdout.splitlines()) == 2  # the header and one job
    assert re.fullmatch(
        r"more: orchestrator jobs list --limit 1 --cursor [0-9a-f-]{36}\n", status.stderr
    )

    assert cli.ok("cancel", later) == f"{later}: cancelled\n"
    again_cancelled = cli("cancel", later)
    one_error_line(again_cancelled, 1, "error: 409 ")
    assert cli.json("jobs", "show", later)["status"] == "cancelled"


def test_cli__status_on_one_screen(system: System, cli: Cli) -> None:
    cli.ok("pools", "create", "gpu-a", "--types", "echo", "--desired", "0")
    system.submit(type="nobody_serves_this", priority="critical")
    system.submit(type="nobody_serves_this")
    wait_until(lambda: system.client.get("/workers").json()["workers"], 10, "the worker")

    screen, data = cli.many(("status",), ("status", "--json"))
    assert screen.returncode == 0, screen.stderr
    text = screen.stdout
    assert "epoch" in field(text, "leader") and field(text, "ready") == "yes"
    queue = next(line for line in text.splitlines() if line.startswith("nobody_serves_this"))
    assert queue.split()[1] == "2" and "critical:1 normal:1" in queue
    assert "24576" in text and "gpu-a" in text and "JOBS RUNNING" in text
    state = json.loads(data.stdout)
    assert set(state) == {"leader", "ready", "queues", "gpus", "pools", "workers"}
    (queue_state,) = [q for q in state["queues"] if q["type"] == "nobody_serves_this"]
    assert queue_state["pending"] == 2
    assert queue_state["by_priority"] == {"critical": 1, "high": 0, "normal": 1, "low": 0}


# -- operators -------------------------------------------------------------------------------


def test_cli__dlq_reclaim_leader_leases_pools_gpu(system: System, cli: Cli) -> None:
    dead = system.submit(type="fail", payload={"message": "to the dlq"}, max_attempts=1)
    system.wait_status(dead, "dead_letter")
    lease = cli.json("leases", "take", "cli-agent", "2000")
    results = cli.many(
        ("dlq", "list"),
        ("dlq", "list", "--type", "fail", "--json"),
        ("reclaim",),
        ("reclaim", "--json"),
        ("leader",),
        ("leader", "--json"),
        ("leases",),
        ("leases", "--json"),
        ("gpu",),
        ("gpu", "--json"),
        ("pools",),
        ("pools", "list", "--json"),
        ("workers", "--json"),
        ("policy", "--json"),
    )
    for result in results:
        assert result.returncode == 0, (result.args, result.stderr)
    dlq, dlq_json, reclaim, reclaim_json, leader, leader_json, *rest = (r.stdout for r in results)
    leases, leases_json, gpu, gpu_json, pools, pools_json, workers_json, policy_json = rest
    assert dead in dlq and "to the dlq" in dlq
    assert [j["id"] for j in json.loads(dlq_json)["jobs"]] == [dead]
    assert reclaim.startswith("scanned ") and "requeued" in reclaim
    assert set(json.loads(reclaim_json)) >= {"scanned", "requeued", "dead_lettered"}
    assert "epoch" in leader and "answered by" in leader
    assert json.loads(leader_json)["is_leader"] is True
    assert "cli-agent" in leases and lease["token"][:12] in leases
    assert [x["token"] for x in json.loads(leases_json)] == [lease["token"]]
    assert "24576" in gpu and "2000" in gpu
    assert [g["leased_mb"] for g in json.loads(gpu_json)["gpus"]].count(2000) == 1
    assert pools == "no pools\n" and json.loads(pools_json) == {"pools": []}
    assert json.loads(workers_json)["workers"][0]["alive"] is True
    assert "policy" in json.loads(policy_json)

    replayed, released = cli.many(("dlq", "replay", dead), ("leases", "release", lease["token"]))
    assert replayed.stdout == f"{dead}: pending\n", replayed.stderr
    assert released.stdout == f"{lease['token']}: released\n", released.stderr
    assert system.wait_status(dead)["status"] == "dead_letter"


def test_cli__usage_table_and_json(system: System, cli: Cli) -> None:
    lease = cli.json("leases", "take", "usage-agent", "2000")
    cli.ok("leases", "release", lease["token"])
    table_run, by_agent, bad = cli.many(
        ("usage",),
        ("usage", "--group-by", "agent", "--since", "1h", "--json"),
        ("usage", "--since", "yesterday"),
    )
    assert table_run.returncode == 0, table_run.stderr
    header, row, total = table_run.stdout.splitlines()
    assert header.split()[:3] == ["OWNER", "LEASES", "GPU-HOURS"]
    assert row.split()[:2] == ["anonymous", "1"] and total.split()[:2] == ["(total)", "1"]
    report = json.loads(by_agent.stdout)
    assert [g["key"] for g in report["groups"]] == ["usage-agent"]
    assert report["group_by"] == "agent" and report["since"] is not None
    one_error_line(bad, 2, "error: not a time or an age")


# -- errors ----------------------------------------------------------------------------------


def test_cli__errors_are_one_line_and_a_nonzero_exit(cli: Cli) -> None:
    missing = "0190a0a0-0000-7000-8000-000000000000"
    results = cli.many(
        ("get", missing),
        ("jobs", "show", "no-such-job", "--json"),
        ("cancel", missing),
        ("dlq", "replay", missing),
        ("submit", "echo", "--payload", "{not json"),
        ("submit", "echo", "--payload", "NaN"),
        ("submit", "Bad-Type"),
        ("submit", "echo", "--gpus", "2"),
        ("jobs", "list", "--limit", "many"),
        ("frobnicate",),
        ("pools", "show", "no-such-pool"),
    )
    get, show, cancel, replay, bad_json, nan, bad_type, no_vram, bad_int, unknown, pool = results
    one_error_line(get, 1, f"error: 404 no job {missing}")
    one_error_line(show, 1, "error: 404 no job no-such-job")
    one_error_line(cancel, 1, "error: 404 ")
    one_error_line(replay, 1, "error: 404 ")
    one_error_line(bad_json, 1, "error: --payload is not JSON")
    one_error_line(nan, 1, "error: --payload is not JSON")
    one_error_line(bad_type, 1, "error: 422 type: ")
    one_error_line(no_vram, 2, "error: --gpus and --model need --gpu-vram")
    one_error_line(pool, 1, "error: 404 ")
    for usage in (bad_int, unknown):
        assert usage.returncode == 2 and "usage: orchestrator" in usage.stderr
    assert all(r.stdout == "" for r in results)


def dead_port() -> int:
    """A port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_cli__an_unreachable_or_malformed_url_is_one_line(tmp_path: Path) -> None:
    down = Cli(f"http://127.0.0.1:{dead_port()}", tmp_path)
    nonsense = Cli("nonsense", tmp_path)
    status, submit, bad_url = [
        *down.many(("status",), ("submit", "echo", "--wait")),
        nonsense("leader"),
    ]
    one_error_line(status, 1, "error: cannot reach the orchestrator at http://127.0.0.1:")
    one_error_line(submit, 1, "error: cannot reach the orchestrator")
    one_error_line(bad_url, 1, "error: nonsense: ")


def test_cli__sends_the_token_from_the_settings(tmp_path: Path) -> None:
    seen: list[str | None] = []

    class Leader(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("authorization"))
            body = json.dumps(
                {
                    "is_leader": True,
                    "leader_id": "a",
                    "epoch": 7,
                    "since": None,
                    "expires_at": None,
                    "instance_id": "a",
                }
            ).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Leader)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        with_token = Cli(url, tmp_path, ORCH_API_TOKEN="s3cret")
        assert field(with_token.ok("leader"), "epoch") == "7"
        Cli(url, tmp_path).ok("leader")
    finally:
        server.shutdown()
        server.server_close()
    assert seen == ["Bearer s3cret", None]


def test_cli__gpu_shows_a_quarantine_and_clear_lifts_it(system: System, cli: Cli) -> None:
    node = system.settings.resolved_node_name()
    rules = FaultRules(faults=1, ooms=1, window_s=60)
    fault = GpuFault(node, 1, FaultKind.XID, "Xid 48: double bit ECC error")
    system.store.record_gpu_fault(fault, system.services.clock.now(), rules)

    listing = cli.ok("gpu")
    assert "quarantined" in listing and "Xid 48" in listing
    assert f"orchestrator gpu clear {node} 1" in listing
    cleared = cli.ok("gpu", "clear", node, "1")
    assert cleared.startswith(f"{node}/1: quarantine cleared (was: 1 xid faults")
    assert cli.json("gpu", "clear", node, "1")["cleared"] is False
    assert not system.store.list_quarantines()
    missing = cli("gpu", "clear", node, "9")
    assert missing.returncode != 0 and "404" in missing.stderr
