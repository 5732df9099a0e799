"""The dashboard at `/`, loaded in headless Chromium against a live server with live data,
on both backends: what the page shows, that it escapes user input, and its replay button.

Chromium is driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`: JSON
messages separated by NUL bytes on fds 3 and 4), so the test can wait for the page to
render and click, with no websocket client. Without Chromium the browser tests skip
locally, and fail in CI (`scripts/setup` installs it when run as root).
"""

from __future__ import annotations

import dataclasses
import json
import os
import select
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from orchestrator.gpu import SimulatedProbe
from orchestrator.gpu_health import FaultKind, FaultRules, GpuFault
from tests.integration.backends import REAL_REQUIRED
from tests.integration.harness import System, wait_until

DEVICE_MB = 24576
# An agent name and an error that would run script if the page rendered them as HTML.
HOSTILE_AGENT = "<b>trainer-7</b>"
HOSTILE_ERROR = "<img src=x onerror=\"document.title='pwned'\"> boom & <script>bad()</script>"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
]

# Chromium reads DevTools commands on fd 3 and writes replies on fd 4. This puts the pipe
# ends there (by way of fds >= 10, so that neither end is overwritten by the other), then
# becomes Chromium.
PIPE_SHIM = """
import fcntl, os, sys
ends = [int(fd) for fd in sys.argv[1:3]]
high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in ends]
for fd in ends:
    os.close(fd)
for target, fd in zip((3, 4), high):
    os.dup2(fd, target)
    os.close(fd)
os.execv(sys.argv[3], sys.argv[3:])
"""


def chromium_binary() -> str:
    found = os.environ.get("ORCH_TEST_CHROMIUM") or shutil.which("chromium")
    if not found:
        message = "chromium is not installed (apt-get install chromium; scripts/setup does it)"
        if REAL_REQUIRED:
            pytest.fail(message)
        pytest.skip(message)
    return found


class Browser:
    """Headless Chromium with one page, driven over the DevTools protocol on a pipe."""

    def __init__(self, binary: str, workdir: Path) -> None:
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        self._log = (workdir / "chromium.log").open("wb")
        self._proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                PIPE_SHIM,
                str(to_chrome_r),
                str(from_chrome_w),
                binary,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={workdir / 'profile'}",
                "--remote-debugging-pipe",
                "about:blank",
            ],
            pass_fds=(to_chrome_r, from_chrome_w),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buffer = b""
        self._next_id = 0
        self._session: str | None = None

    def call(self, method: str, timeout: float = 20.0, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if self._session is not None and not method.startswith(("Target.", "Browser.")):
            message["sessionId"] = self._session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                reply: dict[str, Any] = json.loads(raw)
                if reply.get("id") == self._next_id:  # anything else is an event
                    if "error" in reply:
                        raise AssertionError(f"{method}: {reply['error']}")
                    result: dict[str, Any] = reply.get("result", {})
                    return result
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([self._from_chrome], [], [], max(remaining, 0))
            if not ready:
                raise AssertionError(f"chromium did not answer {method} within {timeout}s")
            chunk = os.read(self._from_chrome, 1 << 20)
            if not chunk:
                raise AssertionError(f"chromium exited: {self._proc.poll()}")
            self._buffer += chunk

    def open(self, url: str) -> None:
        target = self.call("Target.createTarget", url=url)["targetId"]
        self._session = self.call("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]

    def evaluate(self, expression: str) -> Any:
        found = self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in found:
            raise AssertionError(f"{expression!r} raised: {found['exceptionDetails']}")
        return found["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 15.0) -> Any:
        return wait_until(lambda: self.evaluate(expression), timeout, expression)

    def close(self) -> None:
        with suppress(AssertionError, OSError):  # it may be gone already
            self.call("Browser.close", timeout=5)
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        os.close(self._to_chrome)
        os.close(self._from_chrome)
        self._log.close()


Seen = list[tuple[str, str, str | None]]  # (method, path, Authorization header)


@contextmanager
def live_server(system: System, seen: Seen | None = None) -> Iterator[str]:
    """`system`'s app served by uvicorn in a thread on a free port; its base URL. The
    engine already runs under `system.client`, so uvicorn's lifespan is off. Each request
    is noted in `seen`."""
    app = system.client.app

    async def noting(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and seen is not None:
            auth = dict(scope["headers"]).get(b"authorization")
            seen.append((scope["method"], scope["path"], auth.decode() if auth else None))
        await app(scope, receive, send)

    config = uvicorn.Config(noting, host="127.0.0.1", port=0, lifespan="off", log_config=None)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started or not thread.is_alive(), 10, "uvicorn to start")
        assert server.started, "uvicorn did not start"
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    session = Browser(chromium_binary(), tmp_path)
    try:
        yield session
    finally:
        session.close()


@dataclasses.dataclass
class Seeded:
    node: str
    lease_token: str
    lease_device: int
    done_id: str
    dead_id: str
    waiting_id: str
    worker_id: str


def seed(system: System) -> Seeded:
    """Live data of every kind the page shows, made the way production makes it."""
    node = system.settings.resolved_node_name()
    reading = SimulatedProbe([DEVICE_MB, DEVICE_MB]).read()
    hot = dataclasses.replace(reading.devices[0], temperature_c=47.0, memory_used_mb=1024)
    reading = dataclasses.replace(reading, devices=[hot, reading.devices[1]])
    system.store.report_node(
        node, reading, system.services.clock.now(), system.settings.gpu_temp_limit_c
    )
    lease = system.client.post(
        "/leases", json={"agent": HOSTILE_AGENT, "est_vram_mb": 16000, "ttl_s": 600}
    )
    assert lease.status_code == 201, lease.text
    # The other card failed repeatedly: quarantined (orchestrator/gpu_health.py).
    sick = 1 - lease.json()["devices"][0]
    fault = GpuFault(node, sick, FaultKind.XID, "Xid 79: GPU has fallen off the bus")
    system.store.record_gpu_fault(fault, system.services.clock.now(), FaultRules(1, 1, 60))
    pool = system.client.post(
        "/pools", json={"name": "gpu-a", "job_types": ["echo"], "desired": 1, "max_workers": 4}
    )
    assert pool.status_code == 201, pool.text
    worker = system.start_worker()
    done_id = system.submit(type="echo", payload={"hello": "world"})
    dead_id = system.submit(type="fail", payload={"message": HOSTILE_ERROR}, max_attempts=1)
    # No worker serves this type: it waits, and the queue shows it.
    waiting_id = system.submit(type="nobody_serves", priority="high")
    system.wait_status(done_id, "done")
    system.wait_status(dead_id, "dead_letter")
    wait_until(lambda: system.client.get("/leader").json()["is_leader"], 10, "a leader")
    return Seeded(
        node=node,
        lease_token=lease.json()["token"],
        lease_device=lease.json()["devices"][0],
        done_id=done_id,
        dead_id=dead_id,
        waiting_id=waiting_id,
        worker_id=worker.id,
    )


# What the page rendered, read in the page: each section's visible text and the attributes
# the assertions need.
SNAPSHOT = """(() => {
  const all = (sel, f) => [...document.querySelectorAll(sel)].map(f);
  const section = (id) => document.getElementById(id).innerText;
  return {
    title: document.title,
    sections: Object.fromEntries(all("section", (s) => [s.id, s.innerText])),
    gpus: all(".gpu", (g) => ({
      node: g.dataset.node, index: Number(g.dataset.index), text: g.innerText,
      leased: g.querySelector(".bar .leased").style.width,
      agents: all(`.gpu[data-index="${g.dataset.index}"] li[data-lease-agent]`,
                  (li) => li.dataset.leaseAgent),
    })),
    queues: Object.fromEntries(all("#queues tr[data-queue-type]",
      (tr) => [tr.dataset.queueType, tr.innerText])),
    jobLinks: all("#jobs a[href]", (a) => a.getAttribute("href")),
    jobStatuses: Object.fromEntries(all("#jobs tr[data-job-id]",
      (tr) => [tr.dataset.jobId, tr.dataset.status])),
    replay: all("#dlq button[data-replay]", (b) => b.dataset.replay),
    injected: document.querySelectorAll("main img, main script, .agent *, .error *").length,
    leader: document.querySelector("#leader [data-leader-id]")?.dataset.leaderId ?? null,
    servedBy: document.querySelector("[data-served-by]")?.dataset.servedBy ?? null,
  };
})()"""
READY = "document.body?.dataset.state === 'ready'"


@pytest.mark.slow
def test_dashboard__shows_live_state(system: System, browser: Browser) -> None:
    seeded = seed(system)
    with live_server(system) as url:
        browser.open(f"{url}/")
        browser.wait_for(READY)
        # The data may predate the worker's registration: wait for a refresh that has it.
        browser.wait_for(
            f"document.getElementById('workers').innerText.includes({json.dumps(seeded.worker_id)})"
        )
        page = browser.evaluate(SNAPSHOT)

    assert page["title"] == "GPU orchestrator"
    assert not [name for name, text in page["sections"].items() if "cannot show" in text]
    gpus = {g["index"]: g for g in page["gpus"] if g["node"] == seeded.node}
    assert sorted(gpus) == [0, 1]
    for gpu in gpus.values():
        assert "24,576 MB" in gpu["text"] and "Simulated GPU 24 GB" in gpu["text"]
    assert "47 °C" in gpus[0]["text"] and "used 1,024" in gpus[0]["text"]
    leased = gpus[seeded.lease_device]
    assert leased["agents"] == [HOSTILE_AGENT], "the lease is shown on its device"
    assert "leased 16,000" in leased["text"] and HOSTILE_AGENT in leased["text"]
    assert float(leased["leased"].rstrip("%")) == pytest.approx(100 * 16000 / DEVICE_MB, 0.01)
    assert gpus[1 - seeded.lease_device]["agents"] == []
    sick = gpus[1 - seeded.lease_device]["text"]
    assert "quarantined" in sick and "fallen off the bus" in sick
    assert f"orchestrator gpu clear {seeded.node} {1 - seeded.lease_device}" in sick
    assert "quarantined" not in leased["text"]

    assert "pending" not in page["queues"]
    waiting = page["queues"]["nobody_serves"].split()
    assert waiting[:2] == ["nobody_serves", "1"] and "high" in waiting
    assert "fail" in page["queues"], "a dead letter counts in its type's queue"

    for job_id in (seeded.done_id, seeded.dead_id, seeded.waiting_id):
        assert f"/jobs/{job_id}/events" in page["jobLinks"]
    assert page["jobStatuses"][seeded.done_id] == "done"
    assert page["jobStatuses"][seeded.dead_id] == "dead_letter"
    assert page["jobStatuses"][seeded.waiting_id] == "pending"

    assert page["replay"] == [seeded.dead_id]
    assert HOSTILE_ERROR in page["sections"]["dlq"], "user input shows as text"
    assert page["injected"] == 0 and page["title"] != "pwned", "and never as HTML"

    instance = system.services.engine.election.instance_id
    assert page["leader"] == instance and page["servedBy"] == instance
    assert "Epoch" in page["sections"]["leader"] and "this replica" in page["sections"]["leader"]
    assert "gpu-a" in page["sections"]["pools"] and "echo" in page["sections"]["pools"]
    assert seeded.worker_id in page["sections"]["workers"]


@pytest.mark.slow
def test_dashboard__replay_button_replays_a_dead_letter(system: System, browser: Browser) -> None:
    system.start_worker()
    dead_id = system.submit(type="fail", payload={"message": "boom"}, max_attempts=1)
    system.wait_status(dead_id, "dead_letter")
    button = f"document.querySelector('#dlq button[data-replay=\"{dead_id}\"]')"
    seen: Seen = []
    with live_server(system, seen) as url:
        browser.open(f"{url}/")
        browser.wait_for(f"{READY} && {button} !== null")
        # A token set in the page goes with every request from then on (issue 6's auth).
        browser.evaluate(
            "document.getElementById('token').value = 'admin-secret';"
            "document.getElementById('token-form').requestSubmit()"
        )
        assert browser.evaluate("sessionStorage.getItem('orchestrator.dashboard.token')") == (
            "admin-secret"
        )
        browser.evaluate(f"{button}.click()")  # the first click only arms it
        assert browser.wait_for(f"{button}.dataset.armed === '1' && {button}.innerText")
        assert "replayed" not in system.events(dead_id)
        browser.evaluate(f"{button}.click()")
        flash = browser.wait_for(
            "(f => !f.hidden && f.innerText.startsWith('Replayed') && f.innerText)"
            "(document.getElementById('flash'))"
        )
    assert dead_id in flash
    assert "replayed" in system.events(dead_id)
    assert ("POST", f"/dlq/{dead_id}/replay", "Bearer admin-secret") in seen


def test_dashboard__serves_the_page_and_its_assets(system: System) -> None:
    page = system.client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert '<script type="module" src="/dashboard/dashboard.js">' in page.text
    assets = [(f"{name}.js", "text/javascript") for name in ("dashboard", "sections", "dom")]
    for name, kind in [*assets, ("dashboard.css", "text/css")]:
        asset = system.client.get(f"/dashboard/{name}")
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(kind)
    missing = system.client.get("/dashboard/..%2Fapi%2Fdashboard.py")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"


def test_dashboard_data__gathers_the_page_in_one_call(system: System) -> None:
    dead_id = system.submit(type="fail", payload={"message": "x" * 1000}, max_attempts=1)
    system.start_worker()
    system.wait_status(dead_id, "dead_letter")
    body = system.client.get("/dashboard/data", params={"recent": 5}).json()
    assert set(body) >= {"leader", "gpus", "queues", "jobs", "dlq", "pools", "workers"}
    assert body["served_by"] == system.services.engine.election.instance_id
    (row,) = body["dlq"]
    assert row["id"] == dead_id and row["events_url"] == f"/jobs/{dead_id}/events"
    assert len(row["error"]) == 300 and row["error"].endswith("…"), "errors are previewed"
    assert "payload" not in row and body["dlq_total"] == 1
    assert system.client.get("/dashboard/data", params={"recent": 0}).status_code == 422
